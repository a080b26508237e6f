"""Federated XGBoost on shared embeddings, without the Flower runtime.

``histogram``: XGBoost's own federated communicator sums per-site gradient histograms, so every site
grows the same trees as centralized training would (exactly so when ``max_bin`` covers every
distinct feature value). ``bagging``: sites boost from the global model in turn-free rounds and the
server averages their new trees, keeping all K per-class trees of a round together (Flower's
FedXgbBagging tags one tree per update as class 0, which is wrong for multiclass objectives).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import numpy as np

from xincept.common.classifiers import XGBRows, dmatrix, xgb_params
from xincept.common.config import XGBConfig


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_tracker(n_workers: int, port: int, tls_dir: Path | None, timeout: int) -> dict[str, Any]:
    """Start XGBoost's federated tracker (mutual TLS when ``tls_dir`` holds server and CA files); non-blocking."""
    from xgboost import federated

    kwargs: dict[str, Any] = {}
    if tls_dir is not None:
        kwargs = dict(server_key_path=str(tls_dir / "server.key"), server_cert_path=str(tls_dir / "server.pem"),
                      client_cert_path=str(tls_dir / "ca.crt"))
    return federated.run_federated_server(n_workers, port, blocking=False, timeout=timeout, **kwargs) or {}


def train_histogram(x_train: XGBRows, y_train: np.ndarray, x_val: XGBRows | None, y_val: np.ndarray | None,
                    address: str, rank: int, world: int, num_classes: int, cfg: XGBConfig, tls_dir: Path | None,
                    timeout: int = 300) -> bytes:
    """One site's part of histogram-mode training; every site ends with the same booster (raw JSON)."""
    import xgboost as xgb
    from xgboost import collective

    comm: dict[str, Any] = dict(dmlc_communicator="federated", federated_server_address=address, federated_world_size=world,
                                federated_rank=rank, dmlc_timeout=timeout)
    if tls_dir is not None:
        comm.update(federated_secure=True, federated_server_cert_path=str(tls_dir / "ca.crt"),
                    federated_client_key_path=str(tls_dir / "client.key"), federated_client_cert_path=str(tls_dir / "client.pem"))
    params = {**xgb_params(cfg, num_classes), "nthread": 1}
    with collective.CommunicatorContext(**comm):
        dtrain = dmatrix(x_train, y_train)  # a site's margins (the head's logits) stay local, like its rows
        evals = [(dtrain, "train")]
        kwargs: dict[str, Any] = {}
        if x_val is not None and y_val is not None:
            evals.append((dmatrix(x_val, y_val), "val"))  # metrics are summed over sites
            kwargs["early_stopping_rounds"] = cfg.early_stopping_rounds
        booster = xgb.train(params, dtrain, num_boost_round=cfg.n_estimators, evals=evals, verbose_eval=False, **kwargs)
    return bytes(booster.save_raw("json"))


def boost_from(global_raw: bytes | None, x: XGBRows, y: np.ndarray, num_classes: int, cfg: XGBConfig, rounds: int = 1) -> bytes:
    """Bagging: ``rounds`` local boosting rounds on top of the global model (raw JSON in, raw JSON out)."""
    import xgboost as xgb

    start = None
    if global_raw:
        start = xgb.Booster()
        start.load_model(bytearray(global_raw))
    booster = xgb.train({**xgb_params(cfg, num_classes), "nthread": 1}, dmatrix(x, y), num_boost_round=rounds,
                        xgb_model=start, verbose_eval=False)
    return bytes(booster.save_raw("json"))


def _trees(model: dict) -> dict:
    return model["learner"]["gradient_booster"]["model"]


def merge_bagging(global_raw: bytes | None, site_raws: list[bytes], weights: list[float]) -> bytes:
    """Append every site's new trees to the global model, each scaled by its site weight (weights sum to 1).

    A site's new trees are those after the global model's; they stay grouped by boosting iteration with
    their class tags (tree_info), so all K classes of a multiclass round are kept together.
    """
    total = float(sum(weights))
    base = json.loads(global_raw) if global_raw else json.loads(site_raws[0])
    gb = _trees(base)
    n_old = int(gb["gbtree_model_param"]["num_trees"]) if global_raw else 0
    if not global_raw:
        gb["trees"], gb["tree_info"], gb["iteration_indptr"] = [], [], [0]
    for raw, w in zip(site_raws, weights):
        site = _trees(json.loads(raw))
        indptr = site["iteration_indptr"]
        first_iter = next(i for i, p in enumerate(indptr) if p == n_old)
        for it in range(first_iter, len(indptr) - 1):
            lo, hi = indptr[it], indptr[it + 1]
            for tree, cls in zip(site["trees"][lo:hi], site["tree_info"][lo:hi]):
                tree = _scaled(tree, w / total)
                tree["id"] = len(gb["trees"])
                gb["trees"].append(tree)
                gb["tree_info"].append(cls)
            gb["iteration_indptr"].append(len(gb["trees"]))
    gb["gbtree_model_param"]["num_trees"] = str(len(gb["trees"]))
    base["learner"]["attributes"] = {}
    return json.dumps(base).encode()


def _scaled(tree: dict, factor: float) -> dict:
    tree = dict(tree)
    leaves = np.asarray(tree["left_children"]) == -1
    cond = np.asarray(tree["split_conditions"], dtype=np.float64)
    cond[leaves] *= factor
    tree["split_conditions"] = cond.tolist()
    tree["base_weights"] = (np.asarray(tree["base_weights"], dtype=np.float64) * factor).tolist()
    return tree


def booster_from_raw(raw: bytes):
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    return booster
