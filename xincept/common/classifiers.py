"""Classifiers on shared embeddings: XGBoost (the thesis' final stage) and the scikit-learn comparison set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from xincept.common.config import XGBConfig


@dataclass(frozen=True)
class XGBInput:
    """XGBoost's rows: features ``x`` (N, F) and, where XGBoost boosts from the head, its logits ``margin`` (N, K).

    With a margin, XGBoost starts every row from the head's own prediction (``base_margin``) instead of a constant,
    and its trees learn what the head gets wrong. The same margin must be given at prediction time: a booster
    trained this way is a correction of that head, not a classifier on its own (``model.json`` says which).
    """

    x: np.ndarray
    margin: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx) -> "XGBInput":  # noqa: ANN001 (any numpy index)
        return XGBInput(self.x[idx], None if self.margin is None else self.margin[idx])


XGBRows = Union[np.ndarray, XGBInput]


def dmatrix(rows: XGBRows, label: np.ndarray | None = None):
    """An ``xgboost.DMatrix`` of ``rows``, with the head's logits as base margin where ``rows`` carries them."""
    import xgboost as xgb

    if isinstance(rows, XGBInput):
        return xgb.DMatrix(rows.x, label=label, base_margin=rows.margin)
    return xgb.DMatrix(rows, label=label)


def xgb_description(cfg: XGBConfig) -> str:
    """What XGBoost learns from, in words for metrics.json and reports."""
    start = ", boosting from the head's logits" if cfg.margin == "head" else ""
    return f"{cfg.features} features{start}"


def xgb_params(cfg: XGBConfig, num_classes: int) -> dict[str, Any]:
    """Booster parameters shared by centralized and federated training."""
    return {
        "objective": "multi:softprob",
        "num_class": num_classes,
        "eta": cfg.learning_rate,
        "max_depth": cfg.max_depth,
        "subsample": cfg.subsample,
        "colsample_bytree": cfg.colsample_bytree,
        "max_bin": cfg.max_bin,
        "tree_method": "hist",
        "base_score": 0.5,  # a fixed intercept: identical at every site, so federated models add up
        "eval_metric": "mlogloss",
        "seed": cfg.seed,
        "nthread": 0,
    }


def fit_xgb(x_train: XGBRows, y_train: np.ndarray, x_val: XGBRows | None, y_val: np.ndarray | None,
            num_classes: int, cfg: XGBConfig):
    """Train a multiclass booster; early stopping on the validation set when one is given."""
    import xgboost as xgb

    dtrain = dmatrix(x_train, y_train)
    evals = [(dtrain, "train")]
    kwargs: dict[str, Any] = {}
    if x_val is not None and y_val is not None and len(y_val):
        evals.append((dmatrix(x_val, y_val), "val"))
        kwargs["early_stopping_rounds"] = cfg.early_stopping_rounds
    return xgb.train(xgb_params(cfg, num_classes), dtrain, num_boost_round=cfg.n_estimators, evals=evals,
                     verbose_eval=False, **kwargs)


def xgb_predict_proba(booster, x: XGBRows) -> np.ndarray:
    best = getattr(booster, "best_iteration", None)
    rng = (0, best + 1) if best is not None else (0, 0)
    return booster.predict(dmatrix(x), iteration_range=rng).reshape(len(x), -1)


def sklearn_zoo(seed: int = 0) -> dict[str, Any]:
    """The thesis' Table 5.1 comparison: SVM, KNN, AdaBoost, logistic regression, random forest."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import AdaBoostClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return {
        "svm": make_pipeline(StandardScaler(), CalibratedClassifierCV(SVC(random_state=seed), ensemble=False)),
        "knn": make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5)),
        "adaboost": AdaBoostClassifier(random_state=seed),
        "logistic_regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "random_forest": RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=-1),
    }


def predict_proba_full(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """predict_proba padded to all K classes (a model may not have seen every class)."""
    p = model.predict_proba(x)
    out = np.zeros((len(x), num_classes))
    out[:, np.asarray(model.classes_, dtype=int)] = p
    return out
