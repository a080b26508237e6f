"""Phase xgb: the global XGBoost classifier on shared embeddings, trained without moving them."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from xincept.common.fedconfig import FedSettings
from xincept.common.xgb_federated import free_port, merge_bagging, start_tracker
from xincept.head_message import head_arrays, head_content
from xincept.server.context import Federation

log = logging.getLogger(__name__)


def tracker_tls(settings: FedSettings, names: list[str]) -> Path | None:
    """Certificates for the tracker: the deployment's (each site brings its own client certificate), or in a
    simulation a pilot CA generated under OUT with one client certificate per simulated site
    (OUT/xgb-tls/sites/NAME). Never none unless insecure."""
    if settings.insecure:
        return None
    if settings.xgb_tls_dir:
        return Path(settings.xgb_tls_dir)
    from xincept.common.tls import make_certificates, make_site_certificates

    folder = Path(settings.out_dir) / "xgb-tls"
    if not (folder / "server.pem").is_file():
        make_certificates(folder, [settings.public_host, "localhost", "127.0.0.1"])
    missing = [n for n in names if not (folder / "sites" / n / "client.pem").is_file()]
    if missing:
        make_site_certificates(folder, missing)
    return folder


def _bagging(fed: Federation, state: dict[str, torch.Tensor], n_train: dict[str, int]) -> tuple[bytes, dict[str, Any]]:
    """Bagging rounds with early stopping on the validation loss pooled over the sites (their released counts)."""
    settings, nodes = fed.settings, fed.nodes
    arrays = head_arrays(state)  # packed once, sent every round
    raw: bytes | None = None
    total = sum(n_train.values())
    best: tuple[float, int, bytes | None] = (float("inf"), 0, None)
    history = []
    for r in range(1, settings.xgb_bagging_rounds + 1):
        content = head_content(state, arrays, config=fed.config(booster=raw or b""))
        replies = fed.ask("train.xgb_bagging", content, settings.xgb_timeout)
        order = sorted(replies, key=lambda n: nodes[n])  # by site name: the same merge in every run
        raw = merge_bagging(raw, [bytes(replies[n].content["booster"]["json"]) for n in order],
                            [n_train[nodes[n]] / total for n in order])
        val = fed.ask("evaluate.head", head_content(state, arrays, config=fed.config(split="val", booster=raw)),
                      settings.xgb_timeout)
        loss = sum(float(m.content["metrics"]["loss-sum"]) for m in val.values()) / max(
            sum(int(m.content["metrics"]["n"]) for m in val.values()), 1)
        history.append(round(loss, 5))
        if loss < best[0]:
            best = (loss, r, raw)
        elif r - best[1] >= settings.xgb_early_stopping:
            log.info("xgb bagging: no better pooled validation loss for %d rounds; stopping at round %d", settings.xgb_early_stopping, r)
            break
    log.info("xgb bagging: round %d of %d selected (pooled validation loss %.4f)", best[1], len(history), best[0])
    return best[2] or raw, {"mode": "bagging", "rounds": len(history), "selected_round": best[1], "val_loss": history,
                            "sites": len(nodes)}


def run_xgb_phase(fed: Federation, state: dict[str, torch.Tensor], n_train: dict[str, int]) -> tuple[bytes | None, dict[str, Any]]:
    """Return the global booster (raw JSON) and facts about the phase; it ends as soon as any site refuses or fails."""
    settings, nodes = fed.settings, fed.nodes
    t0 = time.perf_counter()
    arrays = head_arrays(state)
    if settings.xgb_mode == "histogram":
        tls = tracker_tls(settings, sorted(nodes.values()))
        port = free_port()
        start_tracker(len(nodes), port, tls, timeout=int(settings.xgb_timeout))
        address = f"{settings.public_host}:{port}"
        msgs = {}
        for rank, node in enumerate(sorted(nodes, key=lambda n: nodes[n])):  # ranks by site name
            extra = {"xgb-address": address, "xgb-rank": rank, "xgb-world": len(nodes)}
            if tls is not None and not settings.xgb_tls_dir:  # simulated sites only; deployed sites bring their own
                extra["xgb-tls-dir"] = str(tls.resolve())
            msgs[node] = head_content(state, arrays, config=fed.config(**extra))
        replies = fed.ask("train.xgb", msgs, settings.xgb_timeout)
        raw = next(bytes(m.content["booster"]["json"]) for m in replies.values() if "booster" in m.content)
        info = {"mode": "histogram", "tls": tls is not None, "sites": len(nodes)}
    else:
        raw, info = _bagging(fed, state, n_train)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    log.info("xgb phase (%s): %.1f s", info["mode"], info["seconds"])
    return raw, info
