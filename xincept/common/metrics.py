"""Classification metrics with bootstrap confidence intervals. Every number is stored beside its protocol."""

from __future__ import annotations

from typing import Any

import numpy as np

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "kappa", "ece")


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """ECE over equal-width confidence bins of the top-class probability."""
    conf = proba.max(1)
    correct = (proba.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def auc_ovr(y: np.ndarray, proba: np.ndarray, k: int) -> float | None:
    from sklearn.metrics import roc_auc_score

    present = np.unique(y)
    if len(present) < 2:
        return None
    if len(present) < k:  # macro over the classes present
        scores = [roc_auc_score(y == c, proba[:, c]) for c in present]
        return float(np.mean(scores))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(k))))


def metrics_from_confusion(cm: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro F1, kappa and the per-class table from a whole confusion matrix.

    A metric no data can define (a class without images has no sensitivity) is None with its reason in
    ``undefined`` (xincept.common.count_metrics), never NaN or 0.
    """
    from xincept.common.count_metrics import ClassCounts, metrics_from_counts

    cm = np.asarray(cm, dtype=np.int64)
    out = metrics_from_counts(int(cm.sum()), int(np.trace(cm)), ClassCounts.from_confusion(cm), classes)
    out["confusion"] = cm.tolist()
    return out


def classification_metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro F1, one-vs-rest AUC, kappa, ECE, per-class table, confusion."""
    from sklearn.metrics import confusion_matrix

    k = len(classes)
    y = np.asarray(y)
    out = metrics_from_confusion(confusion_matrix(y, proba.argmax(1), labels=list(range(k))), classes)
    out["auc_ovr"] = auc_ovr(y, proba, k)
    if out["auc_ovr"] is None:
        out.setdefault("undefined", {})["auc_ovr"] = "fewer than two classes among the images"
    out["ece"] = expected_calibration_error(y, proba) if len(y) else None
    return out


def prediction_curves(y: np.ndarray, proba: np.ndarray, classes: list[str], bins: int = 10) -> dict[str, Any]:
    """Exact one-vs-rest ROC curves per class and a reliability histogram, from predictions held in one place
    (the centralized baseline's out-of-fold predictions); the same shape as a federation's pooled curves."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y)
    curves = {}
    for c, name in enumerate(classes):
        pos = y == c
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos, proba[:, c])
        curves[name] = {"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist(), "auc": float(roc_auc_score(pos, proba[:, c]))}
    conf = proba.max(1)
    which = np.minimum((np.clip(conf, 0, 1) * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=(proba.argmax(1) == y), minlength=bins) / count
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / count
    return {"roc": curves, "reliability": {"count": count.tolist(),  # an empty bin has no accuracy or confidence (None)
                                           "accuracy": [float(a) if c > 0 else None for a, c in zip(acc, count)],
                                           "confidence": [float(a) if c > 0 else None for a, c in zip(mean_conf, count)],
                                           "withheld": [False] * bins}}


def wilson_interval(correct: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion (treats images as independent)."""
    if n == 0:
        return [None, None]  # type: ignore[list-item]  # no images: no interval
    p = correct / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return [float(centre - half), float(centre + half)]


def bootstrap_ci(y: np.ndarray, proba: np.ndarray, classes: list[str], groups: list[str] | None = None,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of the headline metrics.

    With ``groups``, whole groups are resampled (cluster bootstrap): images of one patient are not
    independent, and resampling them one by one would give intervals that are too narrow.
    """
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score

    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    pred = proba.argmax(1)
    k = len(classes)
    if groups is not None:
        _, gid = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        members = [np.flatnonzero(gid == g) for g in range(gid.max() + 1)]
    else:
        members = [np.array([i]) for i in range(len(y))]
    samples: dict[str, list[float]] = {m: [] for m in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "kappa")}
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[i] for i in pick])
        yt, pt = y[idx], pred[idx]
        samples["accuracy"].append(float((yt == pt).mean()))
        samples["balanced_accuracy"].append(float(balanced_accuracy_score(yt, pt)))
        samples["macro_f1"].append(float(f1_score(yt, pt, average="macro", labels=np.unique(yt))))
        samples["kappa"].append(float(cohen_kappa_score(yt, pt, labels=list(range(k)))))
        auc = auc_ovr(yt, proba[idx], k)
        if auc is not None:
            samples["auc_ovr"].append(auc)
    a = (1 - level) / 2
    return {m: [float(np.nanquantile(v, a)), float(np.nanquantile(v, 1 - a))] for m, v in samples.items() if v}


def summarize_folds(folds: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of headline metrics across folds."""
    out = {}
    for m in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr"):
        vals = [f[m] for f in folds if f.get(m) is not None]
        if vals:
            out[m] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
    return out
