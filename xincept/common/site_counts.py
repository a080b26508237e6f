"""What a site's evaluation releases (aggregate counts under disclosure control) and how they pool.

A site turns its predictions into:
- a confusion matrix, the total and the number correct (``release_confusion``);
- the summed cross-entropy loss (one number);
- per class, histograms of the predicted probability among that class's images and among the
  others (``bins`` equal-width bins): enough for pooled one-vs-rest ROC curves and AUC;
- a reliability histogram: per confidence bin, images, correct ones and summed confidence.
Histograms go through the same policy as the confusion matrix. Under ``suppress``, every histogram
vector is treated as if its total were known (the totals follow from n, correct and the confusion
matrix's released rows), so a lone withheld cell gets a complementary one, and a vector that cannot be
protected that way (its only non-zero cell is small) is withheld whole. A reliability bin whose number of
wrong images is small withholds its count of correct ones. Exact float sums follow the counts: a bin's
confidence sum leaves only with its released count, and a split of fewer than ``min-cell-count``
images releases nothing (the site refuses). No per-image value leaves the site.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xincept.common.disclosure import SUPPRESSED, DisclosurePolicy, confusion_from_release, release_confusion
from xincept.common.errors import SettingError
from xincept.common.metrics import metrics_from_confusion

BINS = 10


def _hist(values: np.ndarray, bins: int) -> np.ndarray:
    return np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))[0].astype(np.int64)


def suppress_vector(counts: np.ndarray, threshold: int, hidden: np.ndarray | None = None) -> np.ndarray:
    """Primary suppression of a count vector whose total is known, with complementary suppression.

    ``hidden`` marks cells to withhold besides the small ones. A lone withheld cell would equal the known total
    minus the released cells, so the smallest released non-zero cell is withheld with it; when no such cell
    exists the whole vector is withheld.
    """
    counts = np.asarray(counts, dtype=np.int64)
    hide = (counts > 0) & (counts < threshold)
    if hidden is not None:
        hide |= hidden
    if hide.sum() == 1:
        others = np.flatnonzero(~hide & (counts > 0))
        if len(others):
            hide[others[np.argmin(counts[others])]] = True
        else:
            hide[:] = True
    return np.where(hide, SUPPRESSED, counts)


def _protect(counts: np.ndarray, policy: DisclosurePolicy, rng: np.random.Generator, sensitivity: float,
             hidden: np.ndarray | None = None) -> np.ndarray:
    if policy.kind == "suppress":
        if counts.ndim == 2:
            return np.stack([suppress_vector(row, policy.threshold, None if hidden is None else hidden[i])
                             for i, row in enumerate(counts)])
        return suppress_vector(counts, policy.threshold, hidden)
    if policy.kind == "laplace":
        noisy = counts + rng.laplace(0.0, sensitivity / policy.epsilon, counts.shape)
        return np.clip(np.rint(noisy), 0, None).astype(np.int64)
    return counts


def site_counts(y: np.ndarray, proba: np.ndarray, k: int, policy: DisclosurePolicy, bins: int = BINS,
                seed: int | None = None) -> dict[str, Any]:
    """Everything one evaluation releases, as flat lists of numbers (a Flower MetricRecord)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=np.int64)
    if policy.kind == "suppress" and 0 < len(y) < policy.threshold:
        raise SettingError(f"a split of {len(y)} image(s) is below min-cell-count {policy.threshold}: its counts would "
                           "describe individual patients, so this site releases none")
    proba = np.nan_to_num(np.asarray(proba, dtype=float), nan=1.0 / k)  # a diverged model still reports its counts
    pred = proba.argmax(1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    out = release_confusion(cm, policy, rng)
    out["loss-sum"] = float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-7, None)).sum())
    pos = np.stack([_hist(proba[y == c, c], bins) for c in range(k)])
    neg = np.stack([_hist(proba[y != c, c], bins) for c in range(k)])
    conf = proba.max(1)
    which = np.minimum((np.clip(conf, 0, 1) * bins).astype(int), bins - 1)
    rel_n = np.bincount(which, minlength=bins).astype(np.int64)
    rel_ok = np.bincount(which, weights=(pred == y), minlength=bins).astype(np.int64)
    rel_conf = np.bincount(which, weights=conf, minlength=bins)
    # each image sits in one bin of every class's histogram pair (L1 change 2k when one image changes)
    out["roc-pos"] = _protect(pos, policy, rng, 2 * k).reshape(-1).tolist()
    out["roc-neg"] = _protect(neg, policy, rng, 2 * k).reshape(-1).tolist()
    rel_n_p = _protect(rel_n, policy, rng, 2)
    out["rel-count"] = rel_n_p.tolist()
    wrong = rel_n - rel_ok  # a released count beside a released correct count gives the wrong ones away
    out["rel-correct"] = _protect(rel_ok, policy, rng, 2, hidden=(wrong > 0) & (wrong < policy.threshold)).tolist()
    if policy.kind == "laplace":  # the mean confidence per bin is released only through the noisy count
        rel_conf = rel_conf / np.maximum(rel_n, 1) * np.maximum(rel_n_p, 0)
    out["rel-conf-sum"] = np.where(rel_n_p == SUPPRESSED, 0.0, rel_conf).tolist()
    out["bins"] = bins
    return out


def _clean(values: list[float] | np.ndarray) -> np.ndarray:
    """Released counts with withheld ones (-1) counted as 0."""
    arr = np.asarray(values, dtype=float)
    return np.where(arr == SUPPRESSED, 0.0, arr)


def roc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(FPR, TPR, AUC) of one class from its binned score histograms (thresholds at bin edges)."""
    tp = np.concatenate([[0.0], np.cumsum(pos[::-1])])
    fp = np.concatenate([[0.0], np.cumsum(neg[::-1])])
    if tp[-1] == 0 or fp[-1] == 0:
        return fp, tp, float("nan")
    tpr, fpr = tp / tp[-1], fp / fp[-1]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def pooled_metrics(releases: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Metrics from one or more sites' releases (summed), with what disclosure control withheld."""
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    withheld = 0
    n = correct = 0
    loss = 0.0
    bins = int(releases[0].get("bins", BINS)) if releases else BINS
    pos, neg = np.zeros((k, bins)), np.zeros((k, bins))
    rel_n, rel_ok, rel_conf = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    rel_withheld = np.zeros(bins, dtype=bool)
    roc_withheld = 0
    for r in releases:
        c, h = confusion_from_release(r["confusion"], k)
        cm, withheld = cm + c, withheld + h
        n, correct, loss = n + int(r["n"]), correct + int(r["correct"]), loss + float(r.get("loss-sum", 0.0))
        if "roc-pos" in r:
            pos += _clean(r["roc-pos"]).reshape(k, bins)
            neg += _clean(r["roc-neg"]).reshape(k, bins)
            rel_n += _clean(r["rel-count"])
            rel_ok += _clean(r["rel-correct"])
            rel_conf += np.asarray(r["rel-conf-sum"], dtype=float)
            rel_withheld |= (np.asarray(r["rel-count"]) == SUPPRESSED) | (np.asarray(r["rel-correct"]) == SUPPRESSED)
            roc_withheld += int((np.asarray(r["roc-pos"]) == SUPPRESSED).sum() + (np.asarray(r["roc-neg"]) == SUPPRESSED).sum())
    m = metrics_from_confusion(cm, classes)
    m["n"], m["accuracy"] = n, (correct / n if n else float("nan"))  # exact, whatever cells were withheld
    m["loss"] = loss / max(n, 1)
    m["withheld_cells"] = withheld
    m["auc_ovr"], m["ece"] = None, None
    if len(releases) == 1:  # one site's matrix as released (-1 = withheld), for the report
        m["confusion_released"] = np.asarray(releases[0]["confusion"], dtype=np.int64).reshape(k, k).tolist()
    if pos.sum() > 0:
        curves, aucs = {}, []
        for c, name in enumerate(classes):
            fpr, tpr, auc = roc_from_histograms(pos[c], neg[c])
            curves[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auc}
            if not np.isnan(auc):
                aucs.append(auc)
        m["roc"] = curves
        m["roc_withheld_bins"] = roc_withheld  # histogram bins withheld by disclosure control (counted as 0)
        m["auc_ovr"] = float(np.mean(aucs)) if aucs else None
        with np.errstate(invalid="ignore", divide="ignore"):
            acc_b, conf_b = rel_ok / rel_n, rel_conf / rel_n
        m["reliability"] = {"count": rel_n.tolist(), "accuracy": np.where(rel_n > 0, acc_b, np.nan).tolist(),
                            "confidence": np.where(rel_n > 0, conf_b, np.nan).tolist(), "withheld": rel_withheld.tolist()}
        ok = rel_n > 0
        m["ece"] = float((rel_n[ok] / rel_n.sum() * np.abs(acc_b[ok] - conf_b[ok])).sum()) if ok.any() else None
    return m
