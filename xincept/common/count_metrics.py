"""Metrics from counts, never inventing what was not released.

One function serves a confusion matrix held in one place (centralized training: nothing withheld) and the counts that
federated sites release under disclosure control (some withheld). Its inputs are the exact totals a site can release:
the number of images and of correct predictions, and per class its images (support), its predictions and its correct
ones, each with a mask of values some site withheld. A metric is computed only when every count it needs was
released; otherwise it is ``None`` with a reason in ``withheld``. A metric that no data can define (a class without
images has no sensitivity) is ``None`` with a reason in ``undefined``. Never 0, 100% or NaN in their place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

WITHHELD = "withheld by disclosure control (a site's count was below its min-cell-count)"


@dataclass
class ClassCounts:
    """Per class: images (row totals), predictions (column totals), correct (diagonal); ``*_hidden`` marks withheld."""

    support: np.ndarray
    predicted: np.ndarray
    correct: np.ndarray
    support_hidden: np.ndarray
    predicted_hidden: np.ndarray
    correct_hidden: np.ndarray

    @classmethod
    def from_confusion(cls, cm: np.ndarray, hidden: np.ndarray | None = None) -> "ClassCounts":
        """Totals of a matrix; a total is withheld when any of its cells is (used when no totals were released)."""
        cm = np.asarray(cm, dtype=np.int64)
        hidden = np.zeros(cm.shape, dtype=bool) if hidden is None else np.asarray(hidden, dtype=bool)
        return cls(cm.sum(1), cm.sum(0), np.diag(cm).copy(), hidden.any(1), hidden.any(0), np.diag(hidden).copy())


def _ratio(num: int, den: int, known: bool, undefined_reason: str, name: str, withheld: dict, undefined: dict) -> float | None:
    if not known:
        withheld[name] = WITHHELD
        return None
    if den == 0:
        undefined[name] = undefined_reason
        return None
    return float(num / den)


def metrics_from_counts(n: int, correct: int, counts: ClassCounts, classes: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, Cohen's kappa and the per-class table from released counts.

    Balanced accuracy and macro F1 average over the classes with images in the split (as scikit-learn's
    ``balanced_accuracy_score`` does); F1 = 2 TP / (images + predictions) of the class.
    """
    withheld: dict[str, str] = {}
    undefined: dict[str, str] = {}
    per_class: dict[str, dict[str, Any]] = {}
    sens_all, f1_all = [], []
    sens_known = f1_known = True
    for i, name in enumerate(classes):
        s, p, tp = int(counts.support[i]), int(counts.predicted[i]), int(counts.correct[i])
        s_ok, p_ok, tp_ok = not counts.support_hidden[i], not counts.predicted_hidden[i], not counts.correct_hidden[i]
        w: dict[str, str] = {}
        u: dict[str, str] = {}
        row: dict[str, Any] = {
            "support": s if s_ok else None,
            "predicted": p if p_ok else None,
            "correct": tp if tp_ok else None,
            "sensitivity": _ratio(tp, s, tp_ok and s_ok, f"no {name} images in the split", "sensitivity", w, u),
            "precision": _ratio(tp, p, tp_ok and p_ok, f"no image was predicted {name}", "precision", w, u),
            "specificity": _ratio(n - s - p + tp, n - s, tp_ok and s_ok and p_ok, f"every image is {name}", "specificity", w, u),
            "f1": _ratio(2 * tp, s + p, tp_ok and s_ok and p_ok, f"no {name} images and none predicted", "f1", w, u),
        }
        if w:
            row["withheld"] = w
        if u:
            row["undefined"] = u
        per_class[name] = row
        if not s_ok:  # whether this class counts in the macro averages is itself unknown
            sens_known = f1_known = False
        elif s > 0:
            sens_known &= row["sensitivity"] is not None
            f1_known &= row["f1"] is not None
            sens_all.append(row["sensitivity"])
            f1_all.append(row["f1"])
    out: dict[str, Any] = {"n": int(n), "accuracy": None, "balanced_accuracy": None, "macro_f1": None, "kappa": None}
    if n == 0:
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "kappa"):
            undefined[key] = "no images in the split"
    else:
        out["accuracy"] = float(correct / n)
        if not sens_known:
            withheld["balanced_accuracy"] = WITHHELD + "; it needs every class's images and correct count"
        elif sens_all:
            out["balanced_accuracy"] = float(np.mean(sens_all))
        if not f1_known:
            withheld["macro_f1"] = WITHHELD + "; it needs every class's images, predictions and correct count"
        elif f1_all:
            out["macro_f1"] = float(np.mean(f1_all))
        if counts.support_hidden.any() or counts.predicted_hidden.any():
            withheld["kappa"] = WITHHELD + "; it needs every class's images and predictions"
        else:
            pe = float((counts.support.astype(float) * counts.predicted).sum() / float(n) ** 2)
            po = correct / n
            if pe >= 1.0:
                undefined["kappa"] = "chance agreement is 1 (a single class in truth and predictions)"
            else:
                out["kappa"] = float((po - pe) / (1 - pe))
    out["computed_over_images"] = {k: int(n) for k in ("accuracy", "balanced_accuracy", "macro_f1", "kappa")
                                   if out[k] is not None}
    out["per_class"] = per_class
    if withheld:
        out["withheld"] = withheld
    if undefined:
        out["undefined"] = undefined
    return out
