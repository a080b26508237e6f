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
from flwr.app import RecordDict
from flwr.serverapp import Grid

from xincept import __version__
from xincept.common.site_names import SITE_NAME
from xincept.common.atomic import write_json_atomic
from xincept.common.bundle import write_bundle
from xincept.common.classifiers import xgb_description
from xincept.common.fedconfig import FedSettings
from xincept.common.splits import holdout_folds
from xincept.common.head import add_sums, ensemble_state, head_for_state, sums_to_mean_std
from xincept.common.metrics import wilson_interval
from xincept.common.model import XinceptModel, pick_classifier
from xincept.common.site import weights_meta
from xincept.common.report import write_reports
from xincept.common.versions import package_versions
from xincept.common.xgb_federated import booster_from_raw
from xincept.server.checkpoint import Checkpoint, load_checkpoint
from xincept.server.context import Federation, FederationError, wait_for_sites  # noqa: F401 (FederationError re-exported)
from xincept.server.head_rounds import HeadResult, StoppedAfterRound, run_head_rounds, state_bytes  # noqa: F401
from xincept.server.validate import local_only, score_at_sites, summary
from xincept.server.xgb_phase import run_xgb_phase

log = logging.getLogger(__name__)


@dataclass
class Site:
    node_id: int
    name: str
    info: dict[str, Any]


def check_sites(sites: list[Site]) -> list[str]:
    """All sites must run the same version, backbones and class list; returns the class list.

    The value most sites report is the reference, so the message names the odd site (with two sites, the second).
    """
    for key, what in (("version", "xincept version"), ("fingerprints", "backbone weights (fingerprints)"), ("classes", "class list")):
        values = [list(np.atleast_1d(s.info[key])) for s in sites]
        reference = max(values, key=lambda v: (values.count(v), -values.index(v)))
        ref_site = sites[values.index(reference)]
        odd = [s for s, v in zip(sites, values) if v != reference]
        if odd:
            raise FederationError(
                f"site {odd[0].name} differs from site {ref_site.name}{' and the others' if len(sites) > 2 else ''} in {what}: "
                f"{odd[0].info[key]} vs {ref_site.info[key]}. Every site must install the same xincept version, stage the "
                "same weights and use the same classes")
    return list(sites[0].info["classes"])


def train_global_model(fed: Federation, site_sums: dict[int, dict[int, dict[str, np.ndarray]]], n_train: dict[str, int],
                       ckpt_dir: Path, label: str, stop_after_round: int = 0) -> tuple[HeadResult, bytes | None, dict[str, Any]]:
    """Head rounds and the xgb phase among the federation's sites; input standardisation from their summed statistics."""
    branches = sorted(next(iter(site_sums.values())))
    stats = [sums_to_mean_std(add_sums([site_sums[n][b] for n in fed.nodes])) for b in branches]
    result = train_heads(fed, stats, ckpt_dir, label, stop_after_round, n_train)
    booster_raw, xgb_info = None, {"mode": "none"}
    if fed.settings.xgb_mode != "none":
        booster_raw, xgb_info = run_xgb_phase(fed, result.state, {name: n_train[name] for name in fed.nodes.values()})
        if fed.settings.select_classifier == "best-val":
            booster_raw = choose_classifier(fed, result.state, booster_raw, xgb_info, label)
    return result, booster_raw, xgb_info


def member_dir(ckpt_dir: Path, member: int, members: int) -> Path:
    """Where one head's checkpoint lives: ``ckpt_dir`` itself for a single head, else ``ckpt_dir/member-M``."""
    return ckpt_dir if members == 1 else ckpt_dir / f"member-{member}"


def train_heads(fed: Federation, stats: list[tuple[np.ndarray, np.ndarray]], ckpt_dir: Path, label: str,
                stop_after_round: int = 0, n_train: dict[str, int] | None = None) -> HeadResult:
    """``head-members`` heads, one after another, each with its own rounds and checkpoint; one model of them all.

    Each head keeps its best-validation round; the result's state is that head, or the ensemble of them all
    (:class:`~xincept.common.head.HeadEnsemble`), and its rounds are every head's rounds in order.
    """
    k = fed.settings.head_members
    results = []
    for m in range(k):
        name = label if k == 1 else f"{label} head {m + 1}/{k}"
        stop = max(stop_after_round - m * fed.settings.rounds, 0) if stop_after_round else 0  # counts rounds over all heads
        results.append(run_head_rounds(fed, stats, member_dir(ckpt_dir, m, k), name, stop, member=m, n_train=n_train))
    if k == 1:
        return results[0]
    merged = HeadResult(ensemble_state([r.state for r in results]),
                        rounds=[x for r in results for x in r.rounds], selected_round=results[0].selected_round,
                        seconds=sum(r.seconds for r in results), member_rounds=[r.selected_round for r in results])
    for r in results:
        for site, why in r.rejected.items():
            merged.rejected.setdefault(site, []).extend(why)
    return merged


def choose_classifier(fed: Federation, state: dict, booster_raw: bytes, xgb_info: dict[str, Any], label: str) -> bytes | None:
    """:func:`~xincept.common.model.pick_classifier` on validation accuracies pooled over the sites.

    Returns the booster, or None for the head's softmax.
    """
    _, head_val = score_at_sites(fed, state, None, split="val")
    _, xgb_val = score_at_sites(fed, state, booster_raw, split="val")
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


@dataclass
class Trained:
    """The global model and what the validate phase and the outputs need of its training."""

    result: HeadResult
    booster_raw: bytes | None
    xgb_info: dict[str, Any]
    site_sums: dict[int, dict[int, dict[str, np.ndarray]]]
    n_train: dict[str, int]
    embed_stats: dict[str, dict[str, Any]]
    timing: dict[str, float]
    whole_model: dict[str, Any] | None = None  # whole-model DP: the training's facts (xincept.server.dp_model)


def run_federation(grid: Grid, settings: FedSettings, classes: list[str] | None = None) -> dict[str, Any]:
    """Run every phase and write OUT/model, OUT/metrics.json and OUT/report.md; returns the metrics."""
    t0 = time.perf_counter()
    ckpt = resume_point(settings)
    fed, sites = join(grid, settings, list(ckpt.context["classes"]) if ckpt else classes)
    t_embed = time.perf_counter()
    site_sums, embed_stats = embed(fed)
    t_embed = time.perf_counter() - t_embed
    if settings.dp_mode == "whole-model":
        return run_whole_model_dp(fed, sites, embed_stats, t0, t_embed)
    fed = fed.with_settings(with_dp_budget(fed.settings, len(fed.nodes)))
    n_train = {s.name: int(s.info["n-train"]) for s in sites}
    result, booster_raw, xgb_info = train_global_model(fed, site_sums, n_train, Path(settings.out_dir) / "checkpoint", "global",
                                                       settings.stop_after_round)
    trained = Trained(result, booster_raw, xgb_info, site_sums, n_train, embed_stats,
                      {"embed": round(t_embed, 2), "head_rounds": round(result.seconds, 2), "xgb": xgb_info.get("seconds", 0.0)})
    t_val = time.perf_counter()
    validation = validate(fed, trained)
    trained.timing.update(validate=round(time.perf_counter() - t_val, 2), total=round(time.perf_counter() - t0, 2))
    return write_outputs(fed, sites, trained, validation)


def run_whole_model_dp(fed: Federation, sites: list[Site], embed_stats: dict[str, dict[str, Any]], t0: float,
                       t_embed: float) -> dict[str, Any]:
    """Whole-model DP (xincept.server.dp_model): the linear head from the sites' noisy releases, scored by their noisy
    test counts; every release of every site under its one (epsilon, delta)."""
    from xincept.common.dp_linear import accuracy_noise_sd
    from xincept.server.dp_model import train_whole_model_dp

    in_dims = [int(b["num_features"]) for b in json.loads(str(sites[0].info["backbones"]))]
    state, info = train_whole_model_dp(fed, in_dims)
    result = HeadResult(state, seconds=info["seconds"])
    trained = Trained(result, None, {"mode": "none"}, {}, {s.name: -1 for s in sites}, embed_stats,
                      {"embed": round(t_embed, 2), "head_rounds": info["seconds"], "xgb": 0.0}, whole_model=info)
    t_val = time.perf_counter()
    validation = validate(fed, trained)
    trained.timing.update(validate=round(time.perf_counter() - t_val, 2), total=round(time.perf_counter() - t0, 2))
    g = validation.glob
    noise = counts_noise(fed.settings)
    g["dp_noise"] = {"per_count_sd_per_site": noise, "accuracy_sd": accuracy_noise_sd(
        int(round(g["accuracy"] * g["n"])) if g["n"] else 0, g["n"], len(validation.per_site), noise),
        "note": "the accuracy comes from each site's noisy numbers of correct predictions and of images; accuracy_sd is "
                "what that noise adds (delta method), beside the Wilson interval's sampling error"}
    return write_outputs(fed, sites, trained, validation)


def counts_noise(settings: FedSettings) -> float:
    """The standard deviation of the noise on each released test count of a whole-model DP run."""
    from xincept.common.dp_linear import plan_of

    return plan_of(settings)[1][-1].noise * (settings.group_block if settings.dp_unit == "patient" else 1)


def whole_model_privacy(settings: FedSettings, info: dict[str, Any], sites: list[str],
                        evaluated: list[str]) -> dict[str, dict[str, Any]]:
    """Each site's one (epsilon, delta) over every release it made (what its ledger recorded: the feature sum and class counts, the
    gradient steps it answered, its two test counts), by the same accounting as at the site."""
    from xincept.common.dp_linear import COUNTS_WHAT
    from xincept.common.privacy_accounting import Release, statement

    planned = [Release(**r) for r in info["planned_releases"]]
    out = {}
    for site in sites:
        if site not in info["steps_by_site"]:
            continue  # lost before it released anything
        steps = info["steps_by_site"][site]
        made = [planned[0], Release(planned[1].kind, planned[1].noise, steps, planned[1].what),
                Release(planned[2].kind, planned[2].noise, 1 if site in evaluated else 0, COUNTS_WHAT)]
        out[site] = {**statement(made, settings.dp_delta, settings.dp_unit), "planned_epsilon": settings.dp_epsilon,
                     "reported_by_site_during_training": info["spent"].get(site)}
    return dict(sorted(out.items()))


WHOLE_MODEL_SCOPE = ("Whole-model DP: the epsilon covers everything that left each site. Its releases: once, per class "
                     "the noisy sum of its scaled training features and the noisy number of its units (each unit's "
                     "contribution clipped); at every step, the noisy clipped gradient sum of the linear head; its test "
                     "split's numbers of correct predictions and of images under Gaussian noise. Nothing else: no "
                     "per-feature sums, no XGBoost, no exact counts at join, no validation counts, no confusion matrix, "
                     "loss or histograms. Neighbouring data sets differ by "
                     "one unit added or removed.")


def resume_point(settings: FedSettings) -> Checkpoint | None:
    """The global head's checkpoint when resuming (None for a fresh run, or when there is none to resume)."""
    ckpt_dir = Path(settings.out_dir) / "checkpoint"
    ckpt = load_checkpoint(member_dir(ckpt_dir, 0, settings.head_members)) if settings.resume else None
    if settings.resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting from round 1", ckpt_dir)
    elif ckpt is not None and ckpt.completed_round >= settings.rounds:
        log.info("--resume: the head rounds are complete; going on with the later phases")
    return ckpt


def join(grid: Grid, settings: FedSettings, classes_hint: list[str] | None) -> tuple[Federation, list[Site]]:
    """Wait for the sites, learn their names and facts, and check they can train together."""
    node_ids = wait_for_sites(grid, settings.min_sites, settings.join_timeout, settings.expect_sites)
    hello = Federation(grid, {n: f"node-{n}" for n in node_ids}, settings, classes_hint)
    replies = hello.ask("query.join", RecordDict({"config": hello.config()}), settings.join_timeout)
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
    check_identities(sites, Path(settings.out_dir) / "superlink")
    classes = check_sites(sites)
    log.info("join: %d site(s) %s, classes %s", len(sites), names, classes)
    return Federation(grid, {s.node_id: s.name for s in sites}, settings, classes), sites


def check_identities(sites: list[Site], state: Path) -> None:
    """With node authentication, each node id belongs to the site its key was issued to and each site presents the
    XGBoost certificate issued to it (``start`` records both as it registers the keys): a site that joins under another
    name, or with another certificate, is refused, naming the key or certificate and the names."""
    bindings, certs = state / "node-names.json", state / "xgb-certs.json"
    issued = {int(n): name for n, name in json.loads(bindings.read_text()).items()} if bindings.is_file() else {}
    fingerprints = json.loads(certs.read_text()) if certs.is_file() else {}
    for s in sites:
        owner = issued.get(s.node_id)
        if owner is not None and owner != s.name:
            raise FederationError(f"node {s.node_id} authenticated with the key of site {owner!r} ({owner}.key.pub) but "
                                  f"joined as {s.name!r}: a site must join under the name its key was issued to "
                                  f"(`xincept-client join --site {owner}`), or get its own key (`xincept-server keys --site NAME`)")
        presented, expected = str(s.info.get("xgb-cert", "")), fingerprints.get(s.name)
        if expected and presented and presented != expected:
            holder = next((name for name, fp in fingerprints.items() if fp == presented), None)
            raise FederationError(f"site {s.name!r} presents " + (f"the XGBoost certificate of site {holder!r}" if holder else
                                  "an XGBoost certificate that was not issued to it") + f" (sha256 {presented[:16]}...): pass "
                                  f"`xincept-client join --tls-dir` the folder made for {s.name} (`xincept-server keys --site {s.name}`)")


def embed(fed: Federation) -> tuple[dict[int, dict[int, dict[str, np.ndarray]]], dict[str, dict[str, Any]]]:
    """Each site embeds its images once (cached) and sends per-feature sums for the head's standardisation."""
    replies = fed.ask("query.embed", RecordDict({"config": fed.config()}))
    embed_stats = {fed.nodes[n]: dict(m.content["metrics"]) for n, m in replies.items()}
    site_sums: dict[int, dict[int, dict[str, np.ndarray]]] = {}
    for n, m in replies.items():  # keys "<branch>.<n|sum|sumsq>"
        for key, arr in m.content["sums"].items():
            branch, _, stat = key.partition(".")
            site_sums.setdefault(n, {}).setdefault(int(branch), {})[stat] = arr.numpy()
    log.info("embed: %s", {s: int(v["embedded-now"]) for s, v in embed_stats.items()})
    return site_sums, embed_stats


def with_dp_budget(settings: FedSettings, n_sites: int) -> FedSettings:
    """Every training a site takes part in (the global model, and leave-one-site-out ones) spends from one budget."""
    if settings.dp_epsilon <= 0:
        return settings
    settings = replace(settings, dp_trainings=1 + (n_sites - 1 if settings.loso and n_sites >= 2 else 0))
    log.info("DP-SGD: each site's budget epsilon %g covers %d training(s)", settings.dp_epsilon, settings.dp_trainings)
    if settings.xgb_mode != "none":
        log.warning("DP-SGD covers the head rounds only: %s", privacy_scope(settings))
    return settings


@dataclass
class Validation:
    per_site: dict[str, dict[str, Any]]
    glob: dict[str, Any]
    head_sites: dict[str, dict[str, Any]]
    head_glob: dict[str, Any]
    cross_site: dict[str, dict[str, Any]]
    loso_rounds: list[dict[str, Any]]


def validate(fed: Federation, trained: Trained) -> Validation:
    """The global model (and its head alone) at every site's test split; local-only and leave-one-site-out models."""
    state, booster_raw = trained.result.state, trained.booster_raw
    head_sites, head_glob = score_at_sites(fed, state, None)
    per_site, glob = score_at_sites(fed, state, booster_raw) if booster_raw else (head_sites, head_glob)
    cross_site: dict[str, dict[str, Any]] = {name: {"global": summary(per_site[name])} for name in sorted(fed.nodes.values())}
    if fed.settings.local_only:
        for name, m in local_only(fed).items():
            cross_site[name]["local-only"] = summary(m)
    loso_rounds: list[dict[str, Any]] = []
    if fed.settings.loso and len(fed.nodes) >= 2:
        for node, name in sorted(fed.nodes.items(), key=lambda x: x[1]):
            others = fed.among({n: s for n, s in fed.nodes.items() if n != node})
            res, boost, _ = train_global_model(others, trained.site_sums, trained.n_train,
                                               Path(fed.settings.out_dir) / "checkpoint-loso" / name, f"without {name}")
            held, _ = score_at_sites(fed.among({node: name}), res.state, boost)
            cross_site[name]["leave-one-site-out"] = summary(held[name])
            loso_rounds += res.rounds
    correct = int(round(glob["accuracy"] * glob["n"]))  # released exactly, whatever cells were withheld
    glob["ci95"] = {"accuracy": wilson_interval(correct, glob["n"])}
    return Validation(per_site, glob, head_sites, head_glob, cross_site, loso_rounds)


def protocol_of(settings: FedSettings) -> dict[str, Any]:
    """The split protocol every accuracy of the run is measured under."""
    return {
        "kind": "federated-site-holdout",
        "description": (f"each site holds out a grouped {settings.test_fraction:.0%} test split (fold {settings.test_fold} of "
                        f"{holdout_folds(settings.test_fraction)}, seed {settings.seed}; groups: runs of "
                        f"{settings.group_block} consecutive file numbers or the manifest's group column, duplicates merged) and a grouped "
                        f"{settings.val_fraction:.0%} validation split of the rest; the global model is scored on every site's test split; "
                        "global metrics pool the sites' confusion matrices; the accuracy interval is a Wilson interval over images"),
        "seed": settings.seed, "test_fraction": settings.test_fraction, "val_fraction": settings.val_fraction,
        "test_fold": settings.test_fold, "folds": holdout_folds(settings.test_fraction), "group_block": settings.group_block,
    }


def classifier_text(settings: FedSettings, result: HeadResult, booster_raw: bytes | None, xgb_info: dict[str, Any]) -> str:
    """The global classifier in words (metrics.json's ``classifier``)."""
    if settings.dp_mode == "whole-model":
        return (f"linear head on the frozen features (signed log, unit norm, centred), {settings.dp_steps} full-batch DP "
                f"gradient steps over the sites (whole-model DP, unit: {settings.dp_unit}), softmax")
    members = settings.head_members
    return ((f"ensemble of {members} fused heads (their softmax averaged, their embeddings concatenated), each "
             if members > 1 else "fused head (")
            + f"federated {settings.strategy}, {settings.rounds} rounds x "
            + ("one full-batch gradient step, server Adam" if settings.strategy == "fedsgd"
               else f"{settings.local_epochs} local epochs") + ", "
            + (f"rounds {', '.join(map(str, result.member_rounds))} selected by {settings.select_round}"
               if members > 1 else f"round {result.selected_round} selected by {settings.select_round})")
            + (f" + federated XGBoost ({xgb_info['mode']}) on its {xgb_description(settings.xgb_config())}"
               if booster_raw else ", softmax")
            + (" (chosen by pooled validation accuracy)" if "selection" in xgb_info else ""))


def metrics_of(fed: Federation, sites: list[Site], trained: Trained, v: Validation, weights_info: dict[str, Any]) -> dict[str, Any]:
    """metrics.json: every number from the sites' released counts, with the protocol it was measured under."""
    settings, result, members = fed.settings, trained.result, fed.settings.head_members
    nbytes = state_bytes(result.state) // members  # a round carries one head, whatever the number of heads
    privacy = privacy_by_site(result.rounds + v.loso_rounds)
    scope = privacy_scope(settings)
    wm = trained.whole_model
    if wm is not None:
        privacy = whole_model_privacy(settings, wm, [s.name for s in sites], sorted(v.per_site))
        scope = WHOLE_MODEL_SCOPE
        nbytes = 8 * (result.state["probe.weight"].numel() + result.state["probe.bias"].numel())  # float64 each way
    glob = v.glob
    return {
        "protocol": protocol_of(settings),
        "weights": weights_info["weights"],
        "backbone_weights": weights_info["backbone_weights"],
        "classifier": classifier_text(settings, result, trained.booster_raw, trained.xgb_info),
        "global": glob,
        "head_softmax": {"global": {k: v.head_glob[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "n")},
                         "sites": {s: {"accuracy": x["accuracy"], "n": x["n"]} for s, x in v.head_sites.items()}},
        "xgb": trained.xgb_info,
        "selected_round": result.selected_round,
        "head_members": members,
        **({"selected_rounds": result.member_rounds} if members > 1 else {}),
        "sites": v.per_site,
        "cross_site": v.cross_site,
        "disclosure": ({"policy": "whole-model-dp", "description": "the test split's numbers of correct predictions and "
                        f"of images, with Gaussian noise of standard deviation {counts_noise(settings):.3g} each, in the "
                        "sites' DP plan; no confusion matrix, class totals, loss or histograms",
                        "withheld_cells": int(glob.get("withheld_cells", 0))} if wm else
                       {"policy": settings.disclosure, "description": settings.disclosure_policy().describe(),
                        "withheld_cells": int(glob.get("withheld_cells", 0))}),
        "rejected_updates": result.rejected,
        **({"lost_sites": dict(fed.lost)} if fed.lost else {}),
        **({"secure_aggregation": {"threshold": settings.secagg_threshold_for(len(sites)), "bits": settings.secagg_bits,
                                   "clip": settings.secagg_clip,
                                   "rounds_with_dropouts": (wm["secure_aggregation"]["with_dropouts"] if wm else
                                                            sum(1 for r in result.rounds if r.get("secure_aggregation", {}).get("dropped"))),
                                   **({"rounds": wm["secure_aggregation"]["rounds"],
                                       "bytes_up_per_site": wm["secure_aggregation"]["bytes_up"]} if wm else {})}}
           if settings.secure_aggregation else {}),
        **({"privacy": privacy, "privacy_scope": scope} if privacy else {}),
        **({"whole_model_dp": {k: wm[k] for k in ("steps", "noise_multiplier", "config", "noisy_training_units", "noise",
                                                  "sites_per_step", "seconds", "planned_releases") if k in wm}} if wm else {}),
        **({"central_dp": {"noise_multiplier": settings.central_dp_noise, "clipping_norm": settings.central_dp_clip,
                           "mechanism": "Flower DifferentialPrivacyServerSideFixedClipping (Gaussian noise on the clipped sum)",
                           "note": "the spent epsilon depends on the sampling of sites; with all sites every round it is not amplified"}}
           if settings.central_dp_noise > 0 else {}),
        "rounds": result.rounds,
        "communication": {"bytes_per_site_per_round": nbytes, "bytes_per_site_per_round_both_ways": 2 * nbytes,
                          "full_model_bytes": state_bytes(result.state) + int(sites[0].info.get("backbone_bytes", 0)),
                          "rounds": wm["steps"] if wm else settings.rounds * members, "head_members": members,
                          "bytes_per_site_per_run": 2 * nbytes * (wm["steps"] if wm else settings.rounds * members)},
        "embedding": trained.embed_stats,
        "timing_s": trained.timing,
        "settings": settings.to_flat(),
    }


def _total(counts: list[int]) -> int | None:
    """A sum of released counts; None when a site withheld one (-1)."""
    return None if any(c < 0 for c in counts) else int(sum(counts))


def write_outputs(fed: Federation, sites: list[Site], trained: Trained, v: Validation) -> dict[str, Any]:
    """OUT/model (the bundle), OUT/metrics.json and OUT/report.md, each written whole or not at all."""
    settings, classes, out = fed.settings, list(fed.classes or []), Path(fed.settings.out_dir)
    weights_info = weights_meta(json.loads(str(sites[0].info["backbones"])))  # every site proved the same fingerprints
    metrics = metrics_of(fed, sites, trained, v, weights_info)
    names = [s.name for s in sites]
    meta = {
        "xincept_version": __version__,
        "classes": classes,
        **weights_info,
        "backbones": json.loads(str(sites[0].info["backbones"])),
        "input_size": settings.input_size,
        "package_versions": package_versions(),
        "data_summary": {"n_images": _total([int(s.info[k]) for s in sites for k in ("n-train", "n-val", "n-test")]),
                         "n_groups": _total([int(s.info["n-groups"]) for s in sites]),
                         "sites": {s.name: list(np.atleast_1d(s.info["counts"])) for s in sites}, "synthetic": settings.synthetic},
        "protocol": metrics["protocol"],
        **({"privacy": metrics["privacy"], "privacy_scope": metrics["privacy_scope"]} if "privacy" in metrics else {}),
        "trained_on": f"federation of {len(sites)} sites ({', '.join(names)}), training splits only",
    }
    dims = ([int(b["num_features"]) for b in meta["backbones"]] if trained.whole_model else
            [len(x["sum"]) for _, x in sorted(next(iter(trained.site_sums.values())).items())])
    head = head_for_state(dims, len(classes), settings.run_config().head, trained.result.state)
    model = XinceptModel(head=head, booster=booster_from_raw(trained.booster_raw) if trained.booster_raw else None,
                         classes=classes, xgb_features=settings.xgb_features, xgb_margin=settings.xgb_margin)
    write_bundle(out / "model", model, meta)
    write_json_atomic(out / "metrics.json", metrics)
    write_reports(out, "XIncept-ALL federated training", metrics, meta)
    log.info("federated test accuracy %.3f over %d images at %d sites", v.glob["accuracy"], v.glob["n"], len(sites))
    return metrics
