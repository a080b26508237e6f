"""Phase xgb: the global XGBoost classifier on shared embeddings, trained without moving them."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from xincept.common.fedconfig import FedSettings
from xincept.common.xgb_federated import free_port, merge_bagging, start_tracker

log = logging.getLogger(__name__)


def tracker_tls(settings: FedSettings) -> Path | None:
    """Certificates for the tracker: the deployment's, or a pilot set generated under OUT (never none unless insecure)."""
    if settings.insecure:
        return None
    if settings.xgb_tls_dir:
        return Path(settings.xgb_tls_dir)
    from xincept.common.tls import make_certificates

    folder = Path(settings.out_dir) / "xgb-tls"
    if not (folder / "client.pem").is_file():
        make_certificates(folder, [settings.public_host, "localhost", "127.0.0.1"])
    return folder


def run_xgb_phase(ask: Callable, grid: Any, nodes: dict[int, str], settings: FedSettings, state: dict[str, torch.Tensor],
                  config: Callable[..., ConfigRecord], n_train: dict[str, int]) -> tuple[bytes | None, dict[str, Any]]:
    """Return the global booster (raw JSON) and facts about the phase."""
    t0 = time.perf_counter()
    arrays = ArrayRecord(state)
    if settings.xgb_mode == "histogram":
        tls = tracker_tls(settings)
        port = free_port()
        start_tracker(len(nodes), port, tls, timeout=int(settings.xgb_timeout))
        address = f"{settings.public_host}:{port}"
        msgs = {}
        for rank, node in enumerate(sorted(nodes)):
            extra = {"xgb-address": address, "xgb-rank": rank, "xgb-world": len(nodes)}
            if tls is not None:
                extra["xgb-tls-dir"] = str(tls.resolve())
            msgs[node] = RecordDict({"arrays": arrays, "config": config(**extra)})
        replies = ask(grid, nodes, "train.xgb", msgs, settings.xgb_timeout)
        raw = next(bytes(m.content["booster"]["json"]) for m in replies.values() if "booster" in m.content)
        info = {"mode": "histogram", "tls": tls is not None, "sites": len(nodes)}
    else:
        raw = None
        total = sum(n_train.values())
        for r in range(1, settings.xgb_bagging_rounds + 1):
            content = RecordDict({"arrays": arrays, "config": config(booster=raw or b"")})
            replies = ask(grid, nodes, "train.xgb_bagging", content, settings.xgb_timeout)
            order = sorted(replies)
            raw = merge_bagging(raw, [bytes(replies[n].content["booster"]["json"]) for n in order],
                                [n_train[nodes[n]] / total for n in order])
        info = {"mode": "bagging", "rounds": settings.xgb_bagging_rounds, "sites": len(nodes)}
    info["seconds"] = round(time.perf_counter() - t0, 2)
    log.info("xgb phase (%s): %.1f s", info["mode"], info["seconds"])
    return raw, info
