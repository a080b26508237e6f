"""The complete classifier: fused head -> shared embedding -> XGBoost, fitted on cached features."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xincept.common.classifiers import XGBInput, fit_xgb, xgb_predict_proba
from xincept.common.config import RunConfig
from xincept.common.head import FusedHead
from xincept.common.train_head import TrainHistory, fit_head, predict_logits, softmax, xgb_data


@dataclass
class XinceptModel:
    head: FusedHead
    booster: object
    classes: list[str]
    xgb_features: str  # no default here: XGBConfig's (the one default) or the bundle's own decides
    xgb_margin: str  # "head": the booster boosts from the head's logits and needs them at prediction too
    history: TrainHistory = field(default_factory=TrainHistory)

    def xgb_inputs(self, feats: list[np.ndarray]) -> XGBInput:
        return xgb_data(self.head, feats, self.xgb_features, self.xgb_margin)

    def predict_proba(self, feats: list[np.ndarray]) -> np.ndarray:
        """The model's class probabilities (N, K): XGBoost's, or the head's softmax where no booster was trained."""
        if self.booster is None:
            return self.head_proba(feats)
        return xgb_predict_proba(self.booster, self.xgb_inputs(feats))

    def head_proba(self, feats: list[np.ndarray]) -> np.ndarray:
        """The fused head's own softmax (N, K), reported beside XGBoost."""
        return softmax(predict_logits(self.head, feats))


def select(feats: list[np.ndarray], idx: np.ndarray) -> list[np.ndarray]:
    return [f[idx] for f in feats]


def with_views(feats: list[np.ndarray], views: list[np.ndarray] | None, y: np.ndarray, idx: np.ndarray):
    """Training features of ``idx``: originals plus their cached augmented views, and labels to match."""
    base = select(feats, idx)
    if not views:
        return base, y[idx]
    n_views = views[0].shape[1]
    stacked = [np.concatenate([b] + [v[idx, j] for j in range(n_views)]) for b, v in zip(base, views)]
    return stacked, np.tile(y[idx], n_views + 1)


def pick_classifier(val_accuracy: dict[str, float]) -> str:
    """``head_softmax`` when the head's softmax beats XGBoost on validation images, else ``xgboost``.

    XGBoost is fitted on embeddings of the very images the head was trained on, which the head separates almost
    perfectly; on some splits it then generalises worse than the head's own softmax. Validation images decide
    (never test images); a tie keeps XGBoost, the thesis' classifier.
    """
    return "head_softmax" if val_accuracy["head_softmax"] > val_accuracy["xgboost"] else "xgboost"


def validation_choice(model: XinceptModel, val_feats: list[np.ndarray], y_val: np.ndarray) -> tuple[str, dict[str, float]]:
    """:func:`pick_classifier` on ``model``'s two classifiers; returns the choice and both validation accuracies."""
    val_acc = {"xgboost": float((model.predict_proba(val_feats).argmax(1) == y_val).mean()),
               "head_softmax": float((model.head_proba(val_feats).argmax(1) == y_val).mean())}
    return pick_classifier(val_acc), val_acc


def fit_model(feats: list[np.ndarray], views: list[np.ndarray] | None, y: np.ndarray, train_idx: np.ndarray,
              val_idx: np.ndarray, classes: list[str], cfg: RunConfig) -> XinceptModel:
    """Fit the head (early stopping on ``val_idx``) and XGBoost on the head's representations (``cfg.xgb``)."""
    k = len(classes)
    x_tr, y_tr = with_views(feats, views, y, train_idx)
    x_val, y_val = select(feats, val_idx), y[val_idx]
    head, hist = fit_head(x_tr, y_tr, x_val, y_val, k, cfg.head)
    model = XinceptModel(head=head, booster=None, classes=list(classes), xgb_features=cfg.xgb.features, history=hist,
                         xgb_margin=cfg.xgb.margin)
    model.booster = fit_xgb(model.xgb_inputs(x_tr), y_tr, model.xgb_inputs(x_val), y_val, k, cfg.xgb)
    return model
