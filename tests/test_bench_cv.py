"""The benchmark's cross-validation pooling (bench/federation.py --folds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "federation.py"
    spec = importlib.util.spec_from_file_location("bench_federation", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fold(k: int, acc: float, ref: float, n: int) -> dict:
    return {"command": f"xincept-server simulate --data D --test-fold {k}", "weights": "random", "input_size": 224, "seed": 0,
            "partition": {"scheme": "iid"}, "accuracy": acc, "n_test": n, "head_softmax_accuracy": acc,
            "centralized_reference": {"xgboost": {"accuracy": ref}}, "communication": {}, "xgb": {"mode": "histogram"},
            "privacy": {}, "wall_s": 10.0, "peak_rss_mb": 100.0 + k}


def test_folds_pool_over_every_tested_image() -> None:
    cv = _bench().cross_validated("x", [_fold(0, 0.8, 0.9, 100), _fold(1, 0.6, 0.7, 300)])
    assert cv["cv"]["federated"]["accuracy"] == pytest.approx((80 + 180) / 400)  # weighted by images, not by folds
    assert cv["cv"]["federated"]["n"] == 400 and cv["cv"]["federated"]["fold_mean"] == pytest.approx(0.7)
    lo, hi = cv["accuracy_ci95"]
    assert lo < cv["accuracy"] < hi
    assert cv["cv"]["gap_points"]["pooled"] == pytest.approx(10.0)
    assert "--test-fold K (K = 0..1)" in cv["command"] and cv["wall_s"] == 20.0 and cv["peak_rss_mb"] == 101.0
