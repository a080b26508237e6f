"""The federated run, phase by phase: join -> embed -> head rounds -> validate -> bundle.

Runs inside a Flower ServerApp (deployment or simulation). Only head weights, feature sums
and aggregate counts cross the network.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from xincept import __version__
from xincept.client.task import new_head_for
from xincept.common.atomic import write_json_atomic, write_text_atomic
from xincept.common.bundle import write_bundle
from xincept.common.errors import XinceptError
from xincept.common.fedconfig import FedSettings
from xincept.common.head import add_sums, sums_to_mean_std
from xincept.common.metrics import metrics_from_confusion, wilson_interval
from xincept.common.model import XinceptModel
from xincept.common.report import render_report
from xincept.common.versions import package_versions
from xincept.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from xincept.common.xgb_federated import booster_from_raw
from xincept.server.strategies import make_strategy, restore_strategy_state, strategy_state
from xincept.server.xgb_phase import run_xgb_phase

log = logging.getLogger(__name__)


class FederationError(XinceptError):
    """The federation cannot go on (a site missing, mismatched or failing)."""


class StoppedAfterRound(Exception):
    """Raised by ``stop_after_round`` to imitate a crash in tests."""


@dataclass
class Site:
    node_id: int
    name: str
    info: dict[str, Any]


def wait_for_sites(grid: Grid, min_sites: int, timeout: float) -> list[int]:
    """Node ids once ``min_sites`` have connected; a clear error after ``timeout`` seconds, never a hang."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= min_sites:
            return nodes
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} of the required {min_sites} site(s) joined within {timeout:.0f} s: check that each "
                "site ran `xincept-client join` against this server, or lower --min-sites / raise --join-timeout"
            )
        time.sleep(1.0)


def ask(grid: Grid, nodes: dict[int, str], message_type: str, content: RecordDict | dict[int, RecordDict],
        timeout: float) -> dict[int, Message]:
    """Send one message per node (the same content, or one per node) and collect every reply.

    A missing or failed reply stops the run, naming the site.
    """
    msgs = [Message(content=content[n] if isinstance(content, dict) else content, message_type=message_type, dst_node_id=n)
            for n in nodes]
    replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(msgs, timeout=timeout)}
    missing = [nodes[n] for n in nodes if n not in replies]
    if missing:
        raise FederationError(f"{message_type}: no reply from site(s) {missing} within {timeout:.0f} s")
    failed = {nodes[n]: _short_reason(m.error.reason) for n, m in replies.items() if m.has_error()}
    if failed:
        raise FederationError(f"{message_type}: site(s) failed: " + "; ".join(f"{s}: {r}" for s, r in failed.items()))
    return replies


def _short_reason(reason: str) -> str:
    """The last meaningful line of a remote traceback (the site's own error message)."""
    marker = "Message: "
    if marker in reason:
        reason = reason.rsplit(marker, 1)[1]
    lines = [ln.strip() for ln in reason.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else reason).rstrip("'>")


def check_sites(sites: list[Site]) -> list[str]:
    """All sites must run the same version, backbones and class list; returns the class list."""
    ref = sites[0]
    for s in sites[1:]:
        for key, what in (("version", "xincept version"), ("fingerprints", "backbone weights (fingerprints)"), ("classes", "class list")):
            if list(np.atleast_1d(s.info[key])) != list(np.atleast_1d(ref.info[key])):
                raise FederationError(
                    f"site {s.name} differs from site {ref.name} in {what}: {s.info[key]} vs {ref.info[key]}. "
                    "Every site must install the same xincept version, stage the same weights and use the same classes"
                )
    return list(ref.info["classes"])


def _config(settings: FedSettings, classes: list[str] | None, **extra: Any) -> ConfigRecord:
    flat = settings.client_flat()
    if classes:
        flat["classes"] = list(classes)
    flat.update(extra)
    return ConfigRecord(flat)


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return int(sum(v.numel() * v.element_size() for v in state.values()))


def _site_eval(replies: dict[int, Message], nodes: dict[int, str], classes: list[str]) -> tuple[dict, dict]:
    """Per-site metrics and the pooled global metrics, from aggregate counts only."""
    k = len(classes)
    per_site, total = {}, np.zeros((k, k), dtype=np.int64)
    loss_sum, n_sum, aucs = 0.0, 0, []
    for node, msg in replies.items():
        m = msg.content["metrics"]
        cm = np.asarray(m["confusion"], dtype=np.int64).reshape(k, k)
        total += cm
        site_metrics = metrics_from_confusion(cm, classes)
        n = int(m["num-examples"])
        site_metrics["loss"] = float(m["loss-sum"]) / max(n, 1)
        site_metrics["auc_ovr"] = float(m["auc-ovr"]) if "auc-ovr" in m else None
        if site_metrics["auc_ovr"] is not None:
            aucs.append((site_metrics["auc_ovr"], n))
        per_site[nodes[node]] = site_metrics
        loss_sum, n_sum = loss_sum + float(m["loss-sum"]), n_sum + n
    glob = metrics_from_confusion(total, classes)
    glob["loss"] = loss_sum / max(n_sum, 1)
    glob["auc_ovr"] = float(sum(a * n for a, n in aucs) / sum(n for _, n in aucs)) if aucs else None
    return dict(sorted(per_site.items())), glob


def run_federation(grid: Grid, settings: FedSettings, classes: list[str] | None = None) -> dict[str, Any]:
    """Run every phase and write OUT/model, OUT/metrics.json and OUT/report.md; returns the metrics."""
    t0 = time.perf_counter()
    out = Path(settings.out_dir)
    ckpt_dir = out / "checkpoint"
    ckpt = load_checkpoint(ckpt_dir) if settings.resume else None
    if settings.resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting from round 1", ckpt_dir)

    # -- join ---------------------------------------------------------------------------------
    node_ids = wait_for_sites(grid, settings.min_sites, settings.join_timeout)
    placeholder = {n: f"node-{n}" for n in node_ids}
    classes_hint = list(ckpt.context["classes"]) if ckpt else classes
    replies = ask(grid, placeholder, "query.join", RecordDict({"config": _config(settings, classes_hint)}), settings.join_timeout)
    sites = []
    for n, msg in sorted(replies.items()):
        info = dict(msg.content["info"])
        info.update({k: (list(v) if isinstance(v, list) else v) for k, v in msg.content["metrics"].items()})
        sites.append(Site(n, str(info["site"]), info))
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise FederationError(f"two sites use the same name ({names}): give each `xincept-client join --site` a unique name")
    nodes = {s.node_id: s.name for s in sites}
    classes = check_sites(sites)
    log.info("join: %d site(s) %s, classes %s", len(sites), names, classes)

    # -- embed --------------------------------------------------------------------------------
    t_embed = time.perf_counter()
    replies = ask(grid, nodes, "query.embed", RecordDict({"config": _config(settings, classes)}), settings.round_timeout)
    embed_stats = {nodes[n]: dict(m.content["metrics"]) for n, m in replies.items()}
    sums_by_branch: dict[int, list[dict[str, np.ndarray]]] = {}
    for m in replies.values():  # keys "<branch>.<n|sum|sumsq>"
        per_branch: dict[int, dict[str, np.ndarray]] = {}
        for key, arr in m.content["sums"].items():
            branch, _, stat = key.partition(".")
            per_branch.setdefault(int(branch), {})[stat] = arr.numpy()
        for b, sums in per_branch.items():
            sums_by_branch.setdefault(b, []).append(sums)
    stats = [sums_to_mean_std(add_sums(sums_by_branch[b])) for b in sorted(sums_by_branch)]
    t_embed = time.perf_counter() - t_embed
    log.info("embed: %s", {s: int(v["embedded-now"]) for s, v in embed_stats.items()})

    # -- head rounds --------------------------------------------------------------------------
    in_dims = [len(m) for m, _ in stats]
    head = new_head_for(in_dims, len(classes), settings)
    head.set_standardization(stats)
    state = head.trainable_state()
    strategy = make_strategy(settings, len(sites))
    rounds: list[dict[str, Any]] = []
    start = 1
    if ckpt is not None:
        state, rounds, start = ckpt.head_state, ckpt.rounds, ckpt.completed_round + 1
        restore_strategy_state(strategy, ckpt.strategy_state)
        log.info("resuming after round %d from %s", ckpt.completed_round, ckpt_dir)
    nbytes = state_bytes(state)
    t_rounds = time.perf_counter()
    for r in range(start, settings.rounds + 1):
        tr = time.perf_counter()
        arrays = ArrayRecord(state)
        if hasattr(strategy, "current_arrays"):  # FedOpt family: the arrays the deltas are taken against
            strategy.current_arrays = {k: a.numpy() for k, a in arrays.items()}
        train_replies = ask(grid, nodes, "train.head", RecordDict({"arrays": arrays, "config": _config(settings, classes, **{"server-round": r})}),
                            settings.round_timeout)
        agg, _ = strategy.aggregate_train(r, list(train_replies.values()))
        if agg is None:
            raise FederationError(f"round {r}: no update could be aggregated")
        state = agg.to_torch_state_dict()
        val_replies = ask(grid, nodes, "evaluate.head", RecordDict({"arrays": ArrayRecord(state), "config": _config(settings, classes, split="val")}),
                          settings.round_timeout)
        per_site, glob = _site_eval(val_replies, nodes, classes)
        rounds.append({
            "round": r,
            "seconds": round(time.perf_counter() - tr, 3),
            "train_loss": {nodes[n]: float(m.content["metrics"]["train-loss"]) for n, m in train_replies.items()},
            "val": {"global": {k: glob[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "loss", "n")},
                    "sites": {s: {k: v[k] for k in ("accuracy", "loss", "n")} for s, v in per_site.items()}},
        })
        log.info("round %d/%d: val accuracy %.3f, loss %.4f", r, settings.rounds, glob["accuracy"], glob["loss"])
        save_checkpoint(ckpt_dir, Checkpoint(r, state, rounds, strategy_state(strategy), {"classes": classes}))
        if settings.stop_after_round == r:
            raise StoppedAfterRound(f"stopped after round {r} (stop-after-round)")
    t_rounds = time.perf_counter() - t_rounds

    # -- xgb ----------------------------------------------------------------------------------
    booster_raw, xgb_info = None, {"mode": "none"}
    if settings.xgb_mode != "none":
        n_train = {s.name: int(s.info["n-train"]) for s in sites}
        booster_raw, xgb_info = run_xgb_phase(ask, grid, nodes, settings, state,
                                              lambda **kw: _config(settings, classes, **kw), n_train)

    # -- validate -----------------------------------------------------------------------------
    def evaluate_test(booster: bytes | None) -> tuple[dict, dict]:
        extra = {"split": "test", **({"booster": booster} if booster else {})}
        replies = ask(grid, nodes, "evaluate.head", RecordDict({"arrays": ArrayRecord(state), "config": _config(settings, classes, **extra)}),
                      settings.round_timeout)
        return _site_eval(replies, nodes, classes)

    head_sites, head_glob = evaluate_test(None)
    per_site, glob = evaluate_test(booster_raw) if booster_raw else (head_sites, head_glob)
    correct = int(np.trace(np.asarray(glob["confusion"])))
    glob["ci95"] = {"accuracy": wilson_interval(correct, glob["n"])}
    head.load_state_dict(state)
    weights = "random" if any(s.info.get("weights") == "random" for s in sites) else "pretrained"
    protocol = {
        "kind": "federated-site-holdout",
        "description": (f"each site holds out a grouped {settings.test_fraction:.0%} test split (seed {settings.seed}; groups: runs of "
                        f"{settings.group_block} consecutive file numbers or the manifest's group column, duplicates merged) and a grouped "
                        f"{settings.val_fraction:.0%} validation split of the rest; the global model is scored on every site's test split; "
                        "global metrics pool the sites' confusion matrices; the accuracy interval is a Wilson interval over images"),
        "seed": settings.seed, "test_fraction": settings.test_fraction, "val_fraction": settings.val_fraction,
        "group_block": settings.group_block,
    }
    metrics = {
        "protocol": protocol,
        "weights": weights,
        "classifier": (f"fused head (federated {settings.strategy}, {settings.rounds} rounds x {settings.local_epochs} local epochs)"
                       + (f" + federated XGBoost ({xgb_info['mode']}) on its embeddings" if booster_raw else ", softmax")),
        "global": glob,
        "head_softmax": {"global": {k: head_glob[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "n")},
                         "sites": {s: {"accuracy": v["accuracy"], "n": v["n"]} for s, v in head_sites.items()}},
        "xgb": xgb_info,
        "sites": per_site,
        "rounds": rounds,
        "communication": {"bytes_per_site_per_round": nbytes, "bytes_per_site_per_round_both_ways": 2 * nbytes,
                          "full_model_bytes": nbytes + int(sites[0].info.get("backbone_bytes", 0)),
                          "rounds": settings.rounds, "bytes_per_site_per_run": 2 * nbytes * settings.rounds},
        "embedding": embed_stats,
        "timing_s": {"embed": round(t_embed, 2), "head_rounds": round(t_rounds, 2), "xgb": xgb_info.get("seconds", 0.0),
                     "total": round(time.perf_counter() - t0, 2)},
        "settings": settings.to_flat(),
    }
    meta = {
        "xincept_version": __version__,
        "classes": classes,
        "weights": weights,
        **({"warning": "RANDOM WEIGHTS (--no-pretrained): backbones are not ImageNet-trained; results are not clinical evidence"} if weights == "random" else {}),
        "backbones": json.loads(str(sites[0].info["backbones"])),
        "input_size": settings.input_size,
        "package_versions": package_versions(),
        "data_summary": {"n_images": int(sum(sum(np.atleast_1d(s.info["counts"])) for s in sites)),
                         "n_groups": int(sum(int(s.info["n-groups"]) for s in sites)),
                         "sites": {s.name: list(np.atleast_1d(s.info["counts"])) for s in sites}, "synthetic": settings.synthetic},
        "protocol": protocol,
        "trained_on": f"federation of {len(sites)} sites ({', '.join(names)}), training splits only",
    }
    model = XinceptModel(head=head, booster=booster_from_raw(booster_raw) if booster_raw else None, classes=classes,
                         xgb_features="embedding")
    report = render_report("XIncept-ALL federated training", metrics, meta)
    write_bundle(out / "model", model, meta)
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "report.md", report)
    log.info("federated test accuracy %.3f over %d images at %d sites", glob["accuracy"], glob["n"], len(sites))
    return metrics
