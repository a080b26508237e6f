"""Federated metrics from the counts sites released (``site_counts``), pooled over sites, never from withheld ones.

- Accuracy, balanced accuracy, macro F1 and kappa come from the exact totals (images, correct; per class images,
  predictions and correct ones) through :func:`metrics_from_counts`: a metric whose inputs some site withheld is
  ``None`` with the reason, never computed as if the withheld counts were zeros.
- A class's ROC curve and AUC need all of its score histogram bins: with one withheld at any site, that class's curve
  is withheld (and the macro AUC with it).
- The reliability diagram and ECE use the released bins only; ``reliability.withheld`` marks the others and
  ``ece_over_images`` says how many images the ECE covers.
- The pooled confusion matrix shows released cells; a cell some site withheld is ``None`` (``confusion_withheld``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xincept.common.count_metrics import WITHHELD, ClassCounts, metrics_from_counts
from xincept.common.disclosure import SUPPRESSED
from xincept.common.site_counts import BINS


def _pool(vectors: list[Any], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Sum of released vectors and the mask of entries that any site withheld."""
    total = np.zeros(shape, dtype=np.int64)
    hidden = np.zeros(shape, dtype=bool)
    for v in vectors:
        arr = np.asarray(v, dtype=np.int64).reshape(shape)
        hidden |= arr == SUPPRESSED
        total += np.where(arr == SUPPRESSED, 0, arr)
    return total, hidden


def _class_counts(releases: list[dict[str, Any]], cm: np.ndarray, cm_hidden: np.ndarray, k: int) -> ClassCounts:
    if all("class-total" in r and "pred-total" in r for r in releases):
        support, s_hidden = _pool([r["class-total"] for r in releases], (k,))
        predicted, p_hidden = _pool([r["pred-total"] for r in releases], (k,))
        return ClassCounts(support, predicted, np.diag(cm).copy(), s_hidden, p_hidden, np.diag(cm_hidden).copy())
    return ClassCounts.from_confusion(cm, cm_hidden)  # releases without totals: a row with a withheld cell is unknown


def _roc(classes: list[str], pos: np.ndarray, neg: np.ndarray, hidden: np.ndarray, support: dict[str, Any]) -> tuple[dict, Any, dict]:
    """Per class curve from its pooled histograms (thresholds at bin edges), or the reason it is missing."""
    curves, reasons, aucs = {}, {}, []
    for c, name in enumerate(classes):
        if hidden[c]:
            reasons[name] = f"{int(hidden[c])} of its score histogram bins {WITHHELD}"
            continue
        tp = np.concatenate([[0.0], np.cumsum(pos[c][::-1])])
        fp = np.concatenate([[0.0], np.cumsum(neg[c][::-1])])
        if tp[-1] == 0 or fp[-1] == 0:
            reasons[name] = f"no {name} images" if tp[-1] == 0 else f"only {name} images"
            continue
        tpr, fpr = tp / tp[-1], fp / fp[-1]
        auc = float(np.trapezoid(tpr, fpr))
        curves[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auc}
        aucs.append(auc)
    present = [n for n in classes if support.get(n) != 0]  # unknown (None) counts as present
    missing = [n for n in present if n not in curves]
    macro = float(np.mean([curves[n]["auc"] for n in present])) if present and not missing else None
    return curves, macro, {"per_class": reasons, **({"macro": f"no curve for {', '.join(missing)}"} if missing else {})}


def pooled_metrics(releases: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Metrics from one or more sites' releases (summed), with what disclosure control withheld and why."""
    k = len(classes)
    cm, cm_hidden = _pool([r["confusion"] for r in releases], (k, k))
    n = sum(int(r["n"]) for r in releases)
    correct = sum(int(r["correct"]) for r in releases)
    m = metrics_from_counts(n, correct, _class_counts(releases, cm, cm_hidden, k), classes)
    m["confusion"] = [[None if cm_hidden[i, j] else int(cm[i, j]) for j in range(k)] for i in range(k)]
    m["withheld_cells"] = sum(int((np.asarray(r["confusion"]) == SUPPRESSED).sum()) for r in releases)  # over the sites
    released_loss = bool(releases) and all("loss-sum" in r for r in releases)  # whole-model DP releases the matrix only
    m["loss"] = sum(float(r["loss-sum"]) for r in releases) / n if n and released_loss else None
    m["auc_ovr"], m["ece"] = None, None
    if releases and not any("roc-pos" in r for r in releases):
        m["withheld"] = {**m.get("withheld", {}), "auc_ovr": "not released: the sites sent their confusion matrices only",
                         "ece": "not released: the sites sent their confusion matrices only"}
    if len(releases) == 1:  # one site's matrix as released (-1 = withheld), for the report
        m["confusion_released"] = np.asarray(releases[0]["confusion"], dtype=np.int64).reshape(k, k).tolist()
    if releases and all("roc-pos" in r for r in releases):
        bins = int(releases[0].get("bins", BINS))
        pos, pos_h = _pool([r["roc-pos"] for r in releases], (k, bins))
        neg, neg_h = _pool([r["roc-neg"] for r in releases], (k, bins))
        support = {name: row["support"] for name, row in m["per_class"].items()}
        m["roc"], m["auc_ovr"], reasons = _roc(classes, pos, neg, (pos_h | neg_h).sum(1), support)
        m["roc_withheld_bins"] = int((pos_h | neg_h).sum())
        if reasons["per_class"]:
            m["roc_missing"] = reasons["per_class"]
        if m["auc_ovr"] is None:
            m.setdefault("withheld", {})["auc_ovr"] = reasons.get("macro", "no class has a curve")
        m["reliability"], m["ece"], m["ece_over_images"] = _reliability(releases, bins)
        if m["ece"] is None:
            m.setdefault("withheld", {})["ece"] = f"every reliability bin {WITHHELD}"
    return m


def _reliability(releases: list[dict[str, Any]], bins: int) -> tuple[dict[str, list], float | None, int]:
    """Released bins only: count, accuracy and confidence per bin (None where withheld or empty), and the ECE over the
    released bins with how many images they hold."""
    count, c_hidden = _pool([r["rel-count"] for r in releases], (bins,))
    ok, ok_hidden = _pool([r["rel-correct"] for r in releases], (bins,))
    conf = np.sum([np.asarray(r["rel-conf-sum"], dtype=float) for r in releases], axis=0)
    withheld = c_hidden | ok_hidden
    shown = ~withheld & (count > 0)
    acc = [float(ok[b] / count[b]) if shown[b] else None for b in range(bins)]
    mean_conf = [float(conf[b] / count[b]) if shown[b] else None for b in range(bins)]
    covered = int(count[shown].sum())
    ece = (float(sum(count[b] / covered * abs(acc[b] - mean_conf[b]) for b in range(bins) if shown[b]))  # type: ignore[operator]
           if covered else None)
    return ({"count": [None if c_hidden[b] else int(count[b]) for b in range(bins)], "accuracy": acc,
             "confidence": mean_conf, "withheld": withheld.tolist()}, ece, covered)
