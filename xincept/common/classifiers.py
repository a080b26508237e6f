"""Classifiers on shared embeddings: XGBoost (the thesis' final stage) and the scikit-learn comparison set."""

from __future__ import annotations

from typing import Any

import numpy as np

from xincept.common.config import XGBConfig


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


def fit_xgb(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None,
            num_classes: int, cfg: XGBConfig):
    """Train a multiclass booster; early stopping on the validation set when one is given."""
    import xgboost as xgb

    dtrain = xgb.DMatrix(x_train, label=y_train)
    evals = [(dtrain, "train")]
    kwargs: dict[str, Any] = {}
    if x_val is not None and y_val is not None and len(y_val):
        evals.append((xgb.DMatrix(x_val, label=y_val), "val"))
        kwargs["early_stopping_rounds"] = cfg.early_stopping_rounds
    return xgb.train(xgb_params(cfg, num_classes), dtrain, num_boost_round=cfg.n_estimators, evals=evals,
                     verbose_eval=False, **kwargs)


def xgb_predict_proba(booster, x: np.ndarray) -> np.ndarray:
    import xgboost as xgb

    best = getattr(booster, "best_iteration", None)
    rng = (0, best + 1) if best is not None else (0, 0)
    return booster.predict(xgb.DMatrix(x), iteration_range=rng).reshape(len(x), -1)


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
