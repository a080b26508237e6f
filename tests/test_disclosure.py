"""What a site releases in validation: aggregate counts only, small cells withheld."""

from __future__ import annotations

import numpy as np
import pytest

from xincept.common.disclosure import SUPPRESSED, DisclosurePolicy, release_confusion
from xincept.common.errors import SettingError
from xincept.common.pooled_metrics import pooled_metrics
from xincept.common.site_counts import site_counts


def _predictions(n: int, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 3 * np.eye(k)[y]
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_small_cells_are_withheld_and_no_withheld_cell_can_be_recovered_from_the_totals() -> None:
    cm = np.array([[40, 2, 0, 9], [0, 30, 0, 0], [1, 0, 3, 0], [0, 0, 0, 25]])
    out = release_confusion(cm, DisclosurePolicy("suppress", 5))
    got = np.array(out["confusion"]).reshape(4, 4)
    assert got[0, 1] == SUPPRESSED and got[2, 0] == SUPPRESSED  # off-diagonal 2 and 1: two withheld, sum known only
    assert got[2, 2] == SUPPRESSED  # diagonal 3 withheld ...
    assert got[3, 3] == SUPPRESSED  # ... and the smallest released diagonal cell too, else correct - released recovers it
    assert (got[got >= 0] == cm[got >= 0]).all()  # released cells are exact
    assert out["n"] == cm.sum() and out["correct"] == np.trace(cm) and "class-counts" not in out
    released = got[got >= 0]
    assert not ((released > 0) & (released < 5)).any()
    hidden = got == SUPPRESSED
    diag, off = np.eye(4, dtype=bool), ~np.eye(4, dtype=bool)
    assert (hidden[diag]).sum() != 1 and (hidden[off]).sum() != 1
    # a row total (a class's images) or a column total (its predictions) may be known from the score histograms:
    # no row or column holds a lone withheld cell either, unless nothing else in it could be withheld
    for line, values in [(hidden[i], got[i]) for i in range(4)] + [(hidden[:, i], got[:, i]) for i in range(4)]:
        assert line.sum() != 1 or not (values > 0).any()


def test_a_site_reply_holds_counts_only_and_its_size_does_not_grow_with_images() -> None:
    policy = DisclosurePolicy("suppress", 5)
    small, large = site_counts(*_predictions(40), 4, policy), site_counts(*_predictions(400), 4, policy)
    assert set(small) == set(large) == {"confusion", "n", "correct", "suppressed", "class-total", "pred-total", "loss-sum",
                                        "roc-pos", "roc-neg", "rel-count", "rel-correct", "rel-conf-sum", "bins"}
    for key, value in large.items():
        values = value if isinstance(value, list) else [value]
        assert all(isinstance(v, (int, float)) for v in values), key
        assert len(values) == len(small[key] if isinstance(small[key], list) else [small[key]]), key  # fixed size
    for key in ("confusion", "class-total", "pred-total", "roc-pos", "roc-neg", "rel-count", "rel-correct"):
        arr = np.asarray(small[key])
        assert not ((arr > 0) & (arr < 5)).any(), key  # every count below the threshold is withheld


def test_pooled_metrics_use_exact_totals_and_report_withheld_cells() -> None:
    y, p = _predictions(300)
    release = site_counts(y, p, 4, DisclosurePolicy("suppress", 5))
    m = pooled_metrics([release, release], ["a", "b", "c", "d"])
    assert m["n"] == 600 and m["accuracy"] == pytest.approx((p.argmax(1) == y).mean())
    assert m["withheld_cells"] == 2 * release["suppressed"]
    assert m["ece"] is not None and 0 < m["ece_over_images"] <= 600
    exact = pooled_metrics([site_counts(y, p, 4, DisclosurePolicy("none"))] * 2, ["a", "b", "c", "d"])
    assert 0.5 < exact["auc_ovr"] <= 1.0 and len(exact["roc"]["a"]["fpr"]) == 11  # nothing withheld: every curve
    for name, curve in m["roc"].items():  # under suppression, the curves drawn are the exact ones
        assert curve["auc"] == pytest.approx(exact["roc"][name]["auc"])


def test_laplace_release_is_noisy_but_close() -> None:
    cm = np.diag([100, 100, 100, 100])
    out = release_confusion(cm, DisclosurePolicy("laplace", epsilon=1.0), np.random.default_rng(0))
    got = np.array(out["confusion"]).reshape(4, 4)
    assert (got >= 0).all() and not np.array_equal(got, cm) and abs(out["n"] - 400) < 60


def test_bad_disclosure_settings_are_named() -> None:
    with pytest.raises(SettingError, match="disclosure"):
        DisclosurePolicy("hide")
    with pytest.raises(SettingError, match="min-cell-count"):
        DisclosurePolicy("suppress", 0)


def _from_confusion(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities whose confusion matrix is exactly ``cm`` (predicted class gets 0.7)."""
    y, p = [], []
    k = len(cm)
    for i in range(k):
        for j in range(k):
            for _ in range(int(cm[i, j])):
                y.append(i)
                p.append(np.full(k, 0.3 / (k - 1)) + np.eye(k)[j] * (0.7 - 0.3 / (k - 1)))
    return np.array(y), np.array(p)


def test_metrics_under_suppression_come_from_released_counts_only() -> None:
    """A known matrix through suppression: every reported metric equals the value computed from the released counts,
    and a metric whose counts were withheld is None with a reason (never 0, 100% or NaN)."""
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score

    classes = ["a", "b", "c", "d"]
    # small off-diagonal cells only: every class total, prediction total and diagonal cell is large enough to release
    cm = np.array([[40, 2, 0, 9], [0, 30, 3, 0], [1, 0, 33, 0], [0, 4, 0, 25]])
    y, p = _from_confusion(cm)
    release = site_counts(y, p, 4, DisclosurePolicy("suppress", 5))
    m = pooled_metrics([release], classes)
    assert m["withheld_cells"] > 0 and m["confusion"][0][1] is None  # cells were withheld ...
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx((y == pred).mean())  # ... yet every metric is exact: it needs totals only
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, pred))
    for i, name in enumerate(classes):
        row = m["per_class"][name]
        assert row["support"] == release["class-total"][i] == cm[i].sum()
        assert row["sensitivity"] == pytest.approx(cm[i, i] / cm[i].sum())
        assert row["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())
    assert not set(m.get("withheld", {})) & {"balanced_accuracy", "macro_f1", "kappa"}

    # class c with 3 images: its total is withheld (and one more, else n - released totals recovers it)
    cm2 = np.array([[40, 2, 0, 9], [0, 30, 0, 0], [1, 0, 2, 0], [0, 0, 0, 25]])
    y2, p2 = _from_confusion(cm2)
    release2 = site_counts(y2, p2, 4, DisclosurePolicy("suppress", 5))
    m2 = pooled_metrics([release2], classes)
    assert release2["class-total"][2] == SUPPRESSED and sum(t == SUPPRESSED for t in release2["class-total"]) == 2
    assert m2["accuracy"] == pytest.approx(np.trace(cm2) / cm2.sum()) and m2["n"] == cm2.sum()
    for key in ("balanced_accuracy", "macro_f1", "kappa"):
        assert m2[key] is None and "min-cell-count" in m2["withheld"][key], key
    assert m2["per_class"]["c"]["sensitivity"] is None and "sensitivity" in m2["per_class"]["c"]["withheld"]
    released_a = m2["per_class"]["a"]  # a class whose counts were released keeps its exact figures
    if released_a["support"] is not None:
        assert released_a["sensitivity"] == pytest.approx(40 / 51)
    # pooled over two sites: a count withheld at either site withholds the pooled figure
    both = pooled_metrics([release, release2], classes)
    assert both["n"] == cm.sum() + cm2.sum() and both["balanced_accuracy"] is None
    for doc in (m, m2, both):
        for value in (doc["accuracy"], doc["balanced_accuracy"], doc["macro_f1"], doc["kappa"], doc["ece"], doc["auc_ovr"]):
            assert value is None or np.isfinite(value)


def test_roc_and_reliability_use_released_bins_only() -> None:
    y, p = _predictions(60, seed=3)
    release = site_counts(y, p, 4, DisclosurePolicy("suppress", 5))
    m = pooled_metrics([release], ["a", "b", "c", "d"])
    pos = np.asarray(release["roc-pos"]).reshape(4, -1)
    neg = np.asarray(release["roc-neg"]).reshape(4, -1)
    for c, name in enumerate("abcd"):
        hidden = (pos[c] == SUPPRESSED).any() or (neg[c] == SUPPRESSED).any()
        assert (name in m["roc"]) != hidden  # a class with a withheld bin has no curve, and says why
        if hidden:
            assert "withheld" in m["roc_missing"][name]
    if m["roc_missing"]:
        assert m["auc_ovr"] is None and "auc_ovr" in m["withheld"]
    rel = m["reliability"]
    shown = [not w and c for w, c in zip(rel["withheld"], rel["count"])]
    assert m["ece_over_images"] == sum(c for c, s in zip(rel["count"], shown) if s) <= m["n"]
    assert all(a is None for a, w in zip(rel["accuracy"], rel["withheld"]) if w)


def test_laplace_totals_carry_no_bias_from_empty_cells() -> None:
    """Clipping noisy empty cells at zero would add about 1/epsilon errors per cell; the released totals do not."""
    cm = np.diag([30, 30, 30, 30])  # 12 empty cells
    rng = np.random.default_rng(3)
    outs = [release_confusion(cm, DisclosurePolicy("laplace", epsilon=1.0), rng) for _ in range(400)]
    assert np.mean([o["n"] for o in outs]) == pytest.approx(120, abs=1.0)
    assert np.mean([o["correct"] / o["n"] for o in outs]) == pytest.approx(1.0, abs=0.03)
    assert np.mean([sum(o["confusion"]) for o in outs]) > 125  # the clipped cells alone would overstate the images
