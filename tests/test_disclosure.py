"""What a site releases in validation: aggregate counts only, small cells withheld."""

from __future__ import annotations

import numpy as np
import pytest

from xincept.common.disclosure import SUPPRESSED, DisclosurePolicy, release_confusion
from xincept.common.errors import SettingError
from xincept.common.site_counts import pooled_metrics, site_counts


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
    assert set(small) == set(large) == {"confusion", "n", "correct", "suppressed", "loss-sum", "roc-pos",
                                        "roc-neg", "rel-count", "rel-correct", "rel-conf-sum", "bins"}
    for key, value in large.items():
        values = value if isinstance(value, list) else [value]
        assert all(isinstance(v, (int, float)) for v in values), key
        assert len(values) == len(small[key] if isinstance(small[key], list) else [small[key]]), key  # fixed size
    for key in ("confusion", "roc-pos", "roc-neg", "rel-count", "rel-correct"):
        arr = np.asarray(small[key])
        assert not ((arr > 0) & (arr < 5)).any(), key  # every count below the threshold is withheld


def test_pooled_metrics_use_exact_totals_and_report_withheld_cells() -> None:
    y, p = _predictions(300)
    release = site_counts(y, p, 4, DisclosurePolicy("suppress", 5))
    m = pooled_metrics([release, release], ["a", "b", "c", "d"])
    assert m["n"] == 600 and m["accuracy"] == pytest.approx((p.argmax(1) == y).mean())
    assert m["withheld_cells"] == 2 * release["suppressed"]
    assert 0.5 < m["auc_ovr"] <= 1.0 and len(m["roc"]["a"]["fpr"]) == 11 and m["ece"] is not None


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
