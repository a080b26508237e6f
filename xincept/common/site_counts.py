"""What a site's evaluation releases (aggregate counts under disclosure control) and how they pool.

A site turns its predictions into:
- a confusion matrix, the total and the number correct (``release_confusion``);
- per class, its images (``class-total``) and its predictions (``pred-total``): under ``suppress`` a total below
  ``min-cell-count`` is withheld (with a complementary one: the totals sum to the released number of images); the
  matrix's own suppression already treats these totals as known to a reader, so releasing them adds nothing it
  protects; under ``laplace`` they are the noisy matrix's sums (no further release);
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

from xincept.common.disclosure import SUPPRESSED, DisclosurePolicy, release_confusion, suppress_vector
from xincept.common.errors import SettingError

BINS = 10


def _hist(values: np.ndarray, bins: int) -> np.ndarray:
    return np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))[0].astype(np.int64)


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
