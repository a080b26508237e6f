"""The federated run, phase by phase: join -> embed -> head rounds -> xgb -> validate -> bundle.

Runs inside a Flower ServerApp (deployment or simulation). Only head weights, feature sums
and aggregate counts cross the network.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from xincept import __version__
from xincept.client.policy import SITE_NAME
from xincept.common.atomic import write_json_atomic
from xincept.common.bundle import write_bundle
from xincept.common.classifiers import xgb_description
from xincept.common.errors import XinceptError
from xincept.common.fedconfig import FedSettings
from xincept.common.splits import holdout_folds
from xincept.common.head import add_sums, ensemble_state, head_for_state, sums_to_mean_std
from xincept.common.metrics import wilson_interval
from xincept.common.model import XinceptModel, pick_classifier
from xincept.common.site import weights_meta
from xincept.common.report import write_reports
from xincept.common.versions import code_hash, package_versions
from xincept.common.xgb_federated import booster_from_raw
from xincept.server.checkpoint import load_checkpoint
from xincept.server.head_rounds import HeadResult, StoppedAfterRound, run_head_rounds, state_bytes  # noqa: F401
from xincept.server.validate import local_only, score_at_sites, summary
from xincept.server.xgb_phase import run_xgb_phase

log = logging.getLogger(__name__)


class FederationError(XinceptError):
    """The federation cannot go on (a site missing, mismatched or failing)."""


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


POLL_FIRST_S, POLL_MAX_S = 0.005, 0.05


def send_and_receive(grid: Grid, msgs: list[Message], timeout: float) -> list[Message]:
    """``grid.send_and_receive`` with a short, growing pull interval.

    Flower's grids pull replies every 0.1 s (simulation) or 3 s (deployment), which made most of a fedsgd
    round's time waiting; here the interval starts at 5 ms and grows to 50 ms while sites compute (a reply waits
    at most 50 ms to be noticed; at 0.25 s that wait was a good part of a deployed round, bench/deployed.py).
    """
    pending = set(grid.push_messages(msgs))
    deadline, pause, replies = time.monotonic() + timeout, POLL_FIRST_S, []
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if pending:
            time.sleep(pause)
            pause = min(pause * 1.5, POLL_MAX_S)
    return replies


def ask(grid: Grid, nodes: dict[int, str], message_type: str, content: RecordDict | dict[int, RecordDict],
        timeout: float) -> dict[int, Message]:
    """Send one message per node (the same content, or one per node) and collect every reply.

    A missing or failed reply stops the run, naming the site.
    """
    msgs = [Message(content=content[n] if isinstance(content, dict) else content, message_type=message_type, dst_node_id=n)
            for n in nodes]
    replies = {m.metadata.src_node_id: m for m in send_and_receive(grid, msgs, timeout)}
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
    flat.update({"xincept-version": __version__, "code-hash": code_hash()})  # sites refuse a run built for other code
    if classes:
        flat["classes"] = list(classes)
    flat.update(extra)
    return ConfigRecord(flat)


def train_global_model(grid: Grid, nodes: dict[int, str], settings: FedSettings, classes: list[str],
                       site_sums: dict[int, dict[int, dict[str, np.ndarray]]], config: Any, n_train: dict[str, int],
                       ckpt_dir: Path, label: str, stop_after_round: int = 0) -> tuple[HeadResult, bytes | None, dict[str, Any]]:
    """Head rounds and the xgb phase among ``nodes``; input standardisation from their summed statistics."""
    branches = sorted(next(iter(site_sums.values())))
    stats = [sums_to_mean_std(add_sums([site_sums[n][b] for n in nodes])) for b in branches]
    result = train_heads(grid, nodes, settings, classes, stats, config, ckpt_dir, label, stop_after_round)
    booster_raw, xgb_info = None, {"mode": "none"}
    if settings.xgb_mode != "none":
        booster_raw, xgb_info = run_xgb_phase(ask, grid, nodes, settings, result.state, config,
                                              {nodes[n]: n_train[nodes[n]] for n in nodes})
        if settings.select_classifier == "best-val":
            booster_raw = choose_classifier(grid, nodes, settings, classes, result.state, booster_raw, config, xgb_info, label)
    return result, booster_raw, xgb_info


def member_dir(ckpt_dir: Path, member: int, members: int) -> Path:
    """Where one head's checkpoint lives: ``ckpt_dir`` itself for a single head, else ``ckpt_dir/member-M``."""
    return ckpt_dir if members == 1 else ckpt_dir / f"member-{member}"


def train_heads(grid: Grid, nodes: dict[int, str], settings: FedSettings, classes: list[str],
                stats: list[tuple[np.ndarray, np.ndarray]], config: Any, ckpt_dir: Path, label: str,
                stop_after_round: int = 0) -> HeadResult:
    """``head-members`` heads, one after another, each with its own rounds and checkpoint; one model of them all.

    Each head keeps its best-validation round; the result's state is that head, or the ensemble of them all
    (:class:`~xincept.common.head.HeadEnsemble`), and its rounds are every head's rounds in order.
    """
    k = settings.head_members
    results = []
    for m in range(k):
        name = label if k == 1 else f"{label} head {m + 1}/{k}"
        stop = max(stop_after_round - m * settings.rounds, 0) if stop_after_round else 0  # counts rounds over all heads
        results.append(run_head_rounds(ask, grid, nodes, settings, classes, stats, config, member_dir(ckpt_dir, m, k), name,
                                       stop, member=m))
    if k == 1:
        return results[0]
    merged = HeadResult(ensemble_state([r.state for r in results]),
                        rounds=[x for r in results for x in r.rounds], selected_round=results[0].selected_round,
                        seconds=sum(r.seconds for r in results), member_rounds=[r.selected_round for r in results])
    for r in results:
        for site, why in r.rejected.items():
            merged.rejected.setdefault(site, []).extend(why)
    return merged


def choose_classifier(grid: Grid, nodes: dict[int, str], settings: FedSettings, classes: list[str], state: dict,
                      booster_raw: bytes, config: Any, xgb_info: dict[str, Any], label: str) -> bytes | None:
    """:func:`~xincept.common.model.pick_classifier` on validation accuracies pooled over the sites.

    Returns the booster, or None for the head's softmax.
    """
    _, head_val = score_at_sites(ask, grid, nodes, settings, classes, state, None, config, split="val")
    _, xgb_val = score_at_sites(ask, grid, nodes, settings, classes, state, booster_raw, config, split="val")
    val_acc = {"xgboost": xgb_val["accuracy"], "head_softmax": head_val["accuracy"]}
    chosen = pick_classifier(val_acc)
    xgb_info["selection"] = {"rule": "best pooled validation accuracy (ties: xgboost)", "chosen": chosen, "val_accuracy": val_acc}
    log.info("%s classifier: %s (validation accuracy: XGBoost %.3f, head softmax %.3f)", label, chosen, xgb_val["accuracy"],
             head_val["accuracy"])
    return booster_raw if chosen == "xgboost" else None


def privacy_scope(settings: FedSettings) -> str:
    """What the sites' epsilon covers, in words for an ethics board (``metrics.json`` and ``model.json``)."""
    scope = ("DP-SGD (per image) covers the head rounds: every update of the fused head a site sent. "
             "The embed phase's per-feature sums (refused below min-cell-count images) and the validate phase's counts "
             "(disclosure control) are not under DP")
    if settings.xgb_mode == "none":
        return scope + "; no XGBoost was trained (--xgb-mode none)."
    return (scope + f"; neither is the xgb phase ({settings.xgb_mode}): its "
            + ("gradient histograms" if settings.xgb_mode == "histogram" else "trees")
            + " come from the site's embeddings without DP noise. For a classifier trained under DP alone, use --xgb-mode none.")


def privacy_by_site(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each site's DP-SGD budget as last reported (the accountant's spent epsilon), unit: one image."""
    out: dict[str, dict[str, Any]] = {}
    for r in rounds:
        for site, p in r.get("privacy", {}).items():
            if site in out and out[site]["steps"] >= int(p.get("steps", 0)):
                continue  # the ledger only grows: the entry with most steps is the latest
            out[site] = {"epsilon": p["epsilon"], "delta": p["delta"], "noise_multiplier": p["noise_multiplier"],
                         "max_grad_norm": p["max_grad_norm"], "unit": "image", "steps": int(p.get("steps", 0))}
    return dict(sorted(out.items()))


def run_federation(grid: Grid, settings: FedSettings, classes: list[str] | None = None) -> dict[str, Any]:
    """Run every phase and write OUT/model, OUT/metrics.json and OUT/report.md; returns the metrics."""
    t0 = time.perf_counter()
    out = Path(settings.out_dir)
    ckpt_dir = out / "checkpoint"
    ckpt = load_checkpoint(member_dir(ckpt_dir, 0, settings.head_members)) if settings.resume else None
    if settings.resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting from round 1", ckpt_dir)
    elif ckpt is not None and ckpt.completed_round >= settings.rounds:
        log.info("--resume: the head rounds are complete; going on with the later phases")

    # -- join ---------------------------------------------------------------------------------
    node_ids = wait_for_sites(grid, settings.min_sites, settings.join_timeout)
    placeholder = {n: f"node-{n}" for n in node_ids}
    classes_hint = list(ckpt.context["classes"]) if ckpt else classes
    replies = ask(grid, placeholder, "query.join", RecordDict({"config": _config(settings, classes_hint)}), settings.join_timeout)
    sites = []
    for n, msg in sorted(replies.items()):
        info = dict(msg.content["info"])
        info.update({k: (list(v) if isinstance(v, list) else v) for k, v in msg.content["metrics"].items()})
        if not SITE_NAME.fullmatch(str(info.get("site", ""))):  # names become file names and report text
            raise FederationError(f"node {n} joined with an invalid site name {str(info.get('site'))[:80]!r}: each site must "
                                  "use 1 to 64 letters, digits, '-' or '_' (`xincept-client join --site NAME`)")
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
    site_sums: dict[int, dict[int, dict[str, np.ndarray]]] = {}
    for n, m in replies.items():  # keys "<branch>.<n|sum|sumsq>"
        for key, arr in m.content["sums"].items():
            branch, _, stat = key.partition(".")
            site_sums.setdefault(n, {}).setdefault(int(branch), {})[stat] = arr.numpy()
    t_embed = time.perf_counter() - t_embed
    log.info("embed: %s", {s: int(v["embedded-now"]) for s, v in embed_stats.items()})

    if settings.dp_epsilon > 0:  # every training a site takes part in spends from the same budget
        settings = replace(settings, dp_trainings=1 + (len(nodes) - 1 if settings.loso and len(nodes) >= 2 else 0))
        log.info("DP-SGD: each site's budget epsilon %g covers %d training(s)", settings.dp_epsilon, settings.dp_trainings)
        if settings.xgb_mode != "none":
            log.warning("DP-SGD covers the head rounds only: %s", privacy_scope(settings))

    # -- head rounds and xgb --------------------------------------------------------------------
    config = lambda **kw: _config(settings, classes, **kw)  # noqa: E731
    n_train = {s.name: int(s.info["n-train"]) for s in sites}
    result, booster_raw, xgb_info = train_global_model(grid, nodes, settings, classes, site_sums, config, n_train,
                                                       ckpt_dir, "global", settings.stop_after_round)
    state, rounds, selected_round, t_rounds = result.state, result.rounds, result.selected_round, result.seconds
    members = settings.head_members
    nbytes = state_bytes(state) // members  # a round carries one head, whatever the number of heads

    # -- validate -----------------------------------------------------------------------------
    t_val = time.perf_counter()
    head_sites, head_glob = score_at_sites(ask, grid, nodes, settings, classes, state, None, config)
    per_site, glob = score_at_sites(ask, grid, nodes, settings, classes, state, booster_raw, config) if booster_raw else (head_sites, head_glob)
    cross_site: dict[str, dict[str, Any]] = {name: {"global": summary(per_site[name])} for name in sorted(names)}
    if settings.local_only:
        for name, m in local_only(ask, grid, nodes, settings, classes, config).items():
            cross_site[name]["local-only"] = summary(m)
    loso_rounds: list[dict[str, Any]] = []
    if settings.loso and len(nodes) >= 2:
        for node, name in sorted(nodes.items(), key=lambda x: x[1]):
            others = {n: s for n, s in nodes.items() if n != node}
            res, boost, _ = train_global_model(grid, others, settings, classes, site_sums, config, n_train,
                                               out / "checkpoint-loso" / name, f"without {name}")
            held, _ = score_at_sites(ask, grid, {node: name}, settings, classes, res.state, boost, config)
            cross_site[name]["leave-one-site-out"] = summary(held[name])
            loso_rounds += res.rounds
    t_val = time.perf_counter() - t_val
    correct = int(round(glob["accuracy"] * glob["n"]))  # released exactly, whatever cells were withheld
    glob["ci95"] = {"accuracy": wilson_interval(correct, glob["n"])}
    head = head_for_state([len(v["sum"]) for _, v in sorted(next(iter(site_sums.values())).items())], len(classes),
                          settings.run_config().head, state)
    privacy = privacy_by_site(rounds + loso_rounds)
    weights_info = weights_meta(json.loads(str(sites[0].info["backbones"])))  # every site proved the same fingerprints
    weights = weights_info["weights"]
    protocol = {
        "kind": "federated-site-holdout",
        "description": (f"each site holds out a grouped {settings.test_fraction:.0%} test split (fold {settings.test_fold} of "
                        f"{holdout_folds(settings.test_fraction)}, seed {settings.seed}; groups: runs of "
                        f"{settings.group_block} consecutive file numbers or the manifest's group column, duplicates merged) and a grouped "
                        f"{settings.val_fraction:.0%} validation split of the rest; the global model is scored on every site's test split; "
                        "global metrics pool the sites' confusion matrices; the accuracy interval is a Wilson interval over images"),
        "seed": settings.seed, "test_fraction": settings.test_fraction, "val_fraction": settings.val_fraction,
        "test_fold": settings.test_fold, "folds": holdout_folds(settings.test_fraction), "group_block": settings.group_block,
    }
    metrics = {
        "protocol": protocol,
        "weights": weights,
        "backbone_weights": weights_info["backbone_weights"],
        "classifier": ((f"ensemble of {members} fused heads (their softmax averaged, their embeddings concatenated), each "
                        if members > 1 else "fused head (")
                       + f"federated {settings.strategy}, {settings.rounds} rounds x "
                       + ("one full-batch gradient step, server Adam" if settings.strategy == "fedsgd"
                          else f"{settings.local_epochs} local epochs") + ", "
                       + (f"rounds {', '.join(map(str, result.member_rounds))} selected by {settings.select_round}"
                          if members > 1 else f"round {selected_round} selected by {settings.select_round})")
                       + (f" + federated XGBoost ({xgb_info['mode']}) on its {xgb_description(settings.xgb_config())}"
                          if booster_raw else ", softmax")
                       + (" (chosen by pooled validation accuracy)" if "selection" in xgb_info else "")),
        "global": glob,
        "head_softmax": {"global": {k: head_glob[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "n")},
                         "sites": {s: {"accuracy": v["accuracy"], "n": v["n"]} for s, v in head_sites.items()}},
        "xgb": xgb_info,
        "selected_round": selected_round,
        "head_members": members,
        **({"selected_rounds": result.member_rounds} if members > 1 else {}),
        "sites": per_site,
        "cross_site": cross_site,
        "disclosure": {"policy": settings.disclosure, "description": settings.disclosure_policy().describe(),
                       "withheld_cells": int(glob.get("withheld_cells", 0))},
        "rejected_updates": result.rejected,
        **({"privacy": privacy, "privacy_scope": privacy_scope(settings)} if privacy else {}),
        **({"central_dp": {"noise_multiplier": settings.central_dp_noise, "clipping_norm": settings.central_dp_clip,
                           "mechanism": "Flower DifferentialPrivacyServerSideFixedClipping (Gaussian noise on the clipped sum)",
                           "note": "the spent epsilon depends on the sampling of sites; with all sites every round it is not amplified"}}
           if settings.central_dp_noise > 0 else {}),
        "rounds": rounds,
        "communication": {"bytes_per_site_per_round": nbytes, "bytes_per_site_per_round_both_ways": 2 * nbytes,
                          "full_model_bytes": state_bytes(state) + int(sites[0].info.get("backbone_bytes", 0)),
                          "rounds": settings.rounds * members, "head_members": members,
                          "bytes_per_site_per_run": 2 * nbytes * settings.rounds * members},
        "embedding": embed_stats,
        "timing_s": {"embed": round(t_embed, 2), "head_rounds": round(t_rounds, 2), "xgb": xgb_info.get("seconds", 0.0),
                     "validate": round(t_val, 2),
                     "total": round(time.perf_counter() - t0, 2)},
        "settings": settings.to_flat(),
    }
    meta = {
        "xincept_version": __version__,
        "classes": classes,
        **weights_info,
        "backbones": json.loads(str(sites[0].info["backbones"])),
        "input_size": settings.input_size,
        "package_versions": package_versions(),
        "data_summary": {"n_images": int(sum(int(s.info["n-train"]) + int(s.info["n-val"]) + int(s.info["n-test"]) for s in sites)),
                         "n_groups": int(sum(int(s.info["n-groups"]) for s in sites)),
                         "sites": {s.name: list(np.atleast_1d(s.info["counts"])) for s in sites}, "synthetic": settings.synthetic},
        "protocol": protocol,
        **({"privacy": privacy, "privacy_scope": privacy_scope(settings)} if privacy else {}),
        "trained_on": f"federation of {len(sites)} sites ({', '.join(names)}), training splits only",
    }
    model = XinceptModel(head=head, booster=booster_from_raw(booster_raw) if booster_raw else None, classes=classes,
                         xgb_features=settings.xgb_features, xgb_margin=settings.xgb_margin)
    write_bundle(out / "model", model, meta)
    write_json_atomic(out / "metrics.json", metrics)
    write_reports(out, "XIncept-ALL federated training", metrics, meta)
    log.info("federated test accuracy %.3f over %d images at %d sites", glob["accuracy"], glob["n"], len(sites))
    return metrics
