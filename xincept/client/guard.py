"""Every message from the server, checked against the site's policy before the site computes anything.

:func:`check_request` takes the message type, its settings (a flat dict) and the run id, and returns the
settings the site will act on, or raises :class:`~xincept.client.policy.PolicyViolation` naming the rule.
It is Flower-free; the ClientApp (:mod:`xincept.client.app`) calls it in a mod that sees every message.

Checks, in order:
- message type and settings keys against a strict allow-list (server-only keys such as ``out-dir`` are refused);
- the values themselves (FedSettings' own validation);
- DP: ``require-dp``, ``max-epsilon``, ``delta``, fedsgd without DP, and privacy settings fixed within a run;
- disclosure: mode allowed, ``min-cell-count`` at or above the floor, Laplace epsilon at most the cap;
- the split: fixed at the site on first join (policy values, the rest from that first request), never re-drawn;
- query caps per run and over the site's lifetime; the feature sums answered once per run;
- training heads: at most ``max-standardisations`` distinct input standardisations per run.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from xincept.client.policy import SPLIT_KEYS, PolicyViolation, SitePolicy
from xincept.client.site_state import SiteState
from xincept.common.errors import XinceptError
from xincept.common.fedconfig import FedSettings

SETTINGS_KEYS = frozenset(FedSettings().client_flat()) | {"xincept-version", "code-hash", "classes"}
EXTRA_KEYS: dict[str, frozenset[str]] = {
    "query.join": frozenset(),
    "query.embed": frozenset(),
    "train.head": frozenset({"server-round", "member", "evaluate-split", "secagg-nodes", "secagg-total"}),
    "query.secagg_keys": frozenset({"server-round", "member", "secagg-nodes"}),
    "query.secagg_shares": frozenset({"server-round", "member", "secagg-nodes"}),
    "query.secagg_unmask": frozenset({"server-round", "member", "secagg-nodes", "secagg-survivors", "secagg-dropped"}),
    "evaluate.head": frozenset({"split", "booster"}),
    "train.xgb": frozenset({"xgb-address", "xgb-rank", "xgb-world", "xgb-tls-dir"}),
    "train.xgb_bagging": frozenset({"booster"}),
    "train.local": frozenset(),
    "query.dp_stats": frozenset({"server-round", "member", "secagg-nodes"}),
    "train.dp_step": frozenset({"dp-step", "server-round", "member", "secagg-nodes"}),
}
PRIVACY_KEYS = ("dp-epsilon", "dp-delta", "dp-max-grad-norm", "disclosure", "min-cell-count", "disclosure-epsilon", "dp-mode",
                "dp-unit", "dp-steps", "dp-lr")
EMBED_KEYS = ("backbones", "input-size", "pretrained", "random-backbones", "precision", *SPLIT_KEYS)
SPLIT_BOUNDS = {"test-fraction": (0.1, 0.5), "val-fraction": (0.05, 0.5), "group-block": (1, 10_000)}


def _digest(values: Any) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def query_kinds(message_type: str, cfg: dict[str, Any]) -> list[str]:
    """Which capped query kinds one message counts as."""
    if message_type == "train.head":
        return ["train-head"] + (["val-release"] if cfg.get("evaluate-split") else [])
    if message_type == "evaluate.head":
        return ["val-release" if str(cfg.get("split", "val")) == "val" else "test-release"]
    if message_type.startswith("query.secagg_"):
        return []  # the steps of a secure round carry keys and shares, no data; the round's train.head counts
    if message_type in ("query.dp_stats", "train.dp_step"):
        return []  # whole-model DP: the site's privacy ledger caps these releases by its budget
    return [{"query.join": "join", "query.embed": "embed", "train.xgb": "xgb", "train.xgb_bagging": "xgb-bagging",
             "train.local": "local"}[message_type]]


def _check_keys(message_type: str, cfg: dict[str, Any]) -> None:
    if message_type not in EXTRA_KEYS:
        raise PolicyViolation("allow-list", f"message type {message_type!r} is not one this site answers")
    unknown = sorted(set(cfg) - SETTINGS_KEYS - EXTRA_KEYS[message_type])
    if unknown:
        raise PolicyViolation("allow-list", f"{message_type} carries setting(s) {unknown} that are not in this site's allow-list")
    for key in ("evaluate-split", "split"):
        if key in cfg and cfg[key] and str(cfg[key]) not in ("val", "test"):
            raise PolicyViolation("evaluate-split", f"counts may be released on the val or test split only, not {cfg[key]!r}")


def _check_privacy(policy: SitePolicy, s: FedSettings, message_type: str) -> None:
    if policy.require_whole_model_dp and s.dp_mode != "whole-model":
        raise PolicyViolation("require-whole-model-dp", "this site takes part only in whole-model DP runs (every release "
                              f"under one epsilon); the server asked for dp-mode {s.dp_mode!r}"
                              + ("" if s.dp_epsilon > 0 else " without DP"))
    if policy.require_secure_aggregation and not s.secure_aggregation:
        raise PolicyViolation("require-secure-aggregation", "this site sends its head updates only through secure "
                              "aggregation; the server asked for a run without it (start it with --secure-aggregation)")
    if policy.require_dp and s.dp_epsilon <= 0:
        raise PolicyViolation("require-dp", "this site requires DP-SGD for every run; the server asked for dp-epsilon 0")
    if s.dp_epsilon > policy.max_epsilon:
        raise PolicyViolation("max-epsilon", f"dp-epsilon {s.dp_epsilon:g} is above this site's maximum {policy.max_epsilon:g}")
    if s.dp_epsilon > 0 and s.dp_delta > policy.delta:
        raise PolicyViolation("delta", f"dp-delta {s.dp_delta:g} is above this site's maximum {policy.delta:g}")
    if s.strategy == "fedsgd" and s.dp_epsilon <= 0 and not policy.allow_fedsgd_without_dp:
        raise PolicyViolation("allow-fedsgd-without-dp", "this site does not upload exact full-batch gradients without DP; "
                              "run with --dp-epsilon (strategy fedavg)")
    if s.disclosure not in policy.disclosure_modes:
        raise PolicyViolation("disclosure-modes", f"disclosure {s.disclosure!r} is not allowed here (allowed: "
                              f"{list(policy.disclosure_modes)})")
    if s.min_cell_count < policy.min_cell_count:
        raise PolicyViolation("min-cell-count", f"min-cell-count {s.min_cell_count} is below this site's floor {policy.min_cell_count}")
    if s.disclosure == "laplace" and s.disclosure_epsilon > policy.max_disclosure_epsilon:
        raise PolicyViolation("max-disclosure-epsilon", f"disclosure-epsilon {s.disclosure_epsilon:g} is above this site's "
                              f"maximum {policy.max_disclosure_epsilon:g}")


def _fixed_split(policy: SitePolicy, state: SiteState, flat: dict[str, Any]) -> dict[str, Any]:
    """The site's split: stored at first join (policy values, the rest from that request within bounds)."""
    stored = state.split()
    if stored is None:
        values = {k: flat[k] for k in SPLIT_KEYS}
        values.update(policy.pinned_split())
        for key, (lo, hi) in SPLIT_BOUNDS.items():
            if not lo <= values[key] <= hi:
                raise PolicyViolation("split", f"{key} {values[key]} is outside [{lo}, {hi}]; this site will not fix such a split")
        stored = {**values, "fixed_at": time.time()}
        state.fix_split(stored)
        return stored
    pinned = policy.pinned_split()
    changed = {k: (stored[k], v) for k, v in pinned.items() if stored[k] != v}
    if changed:
        raise PolicyViolation("split", f"the policy's split {changed} differs from the split this site fixed at first join "
                              f"({state.split_path.name}); a new split re-exposes test images: delete that file only if the "
                              "site's data protection officer agrees")
    return stored


def check_request(policy: SitePolicy, state: SiteState, message_type: str, cfg: dict[str, Any], run_id: int,
                  standardisation: str | None = None) -> FedSettings:
    """The settings a message asks this site to act on, once every rule of ``policy`` holds.

    ``standardisation`` is a digest of the input standardisation a training head carries (train.head only).
    Counts are recorded only when every check passes (a refused message spends nothing).
    """
    _check_keys(message_type, cfg)
    try:
        settings = FedSettings.from_flat(cfg)
    except (XinceptError, ValueError, TypeError) as exc:
        raise PolicyViolation("settings", str(exc)) from None
    flat = settings.to_flat()
    _check_privacy(policy, settings, message_type)
    with state.locked():
        split = _fixed_split(policy, state, flat)
        asked = {k: flat[k] for k in SPLIT_KEYS}
        differs = {k: f"{asked[k]} (fixed: {split[k]})" for k in SPLIT_KEYS if asked[k] != split[k]}
        if differs:
            raise PolicyViolation("split", f"the server asked for {differs}; this site's split was fixed at first join and is "
                                  "never re-drawn by a server")
        doc = state.queries()
        run = doc["runs"].setdefault(str(run_id), {"first": time.time(), "counts": {}, "standardisations": []})
        privacy = {k: flat[k] for k in PRIVACY_KEYS}
        if "privacy" in run and run["privacy"] != privacy:
            changed = {k: (run["privacy"][k], v) for k, v in privacy.items() if run["privacy"][k] != v}
            raise PolicyViolation("privacy-fixed-per-run", f"privacy settings changed within run {run_id}: {changed}")
        run["privacy"] = privacy
        kinds = query_kinds(message_type, cfg)
        if message_type == "query.embed":
            digest = _digest({k: flat[k] for k in EMBED_KEYS})
            if run.get("embed") not in (None, digest):
                raise PolicyViolation("queries.embed", "the feature sums were answered once in this run; a second request "
                                      "over other settings or images is refused")
            if run.get("embed") == digest:
                kinds = []  # the same question again: the same (cached) answer, nothing new leaves
            run["embed"] = digest
        if message_type == "train.head" and standardisation is not None and standardisation not in run["standardisations"]:
            if len(run["standardisations"]) >= policy.max_standardisations:
                raise PolicyViolation("max-standardisations", f"run {run_id} already sent {policy.max_standardisations} "
                                      "distinct input standardisations in training heads; a changed one is refused")
            run["standardisations"].append(standardisation)
        for kind in kinds:
            used_run, used_life = int(run["counts"].get(kind, 0)), int(doc["lifetime"].get(kind, 0))
            if used_run >= policy.queries_per_run[kind]:
                raise PolicyViolation(f"queries.per-run.{kind}", f"{used_run} {kind} queries answered in this run (the cap)")
            if used_life >= policy.queries_lifetime[kind]:
                raise PolicyViolation(f"queries.lifetime.{kind}", f"{used_life} {kind} queries answered over this site's "
                                      "lifetime (the cap)")
        for kind in kinds:
            run["counts"][kind] = int(run["counts"].get(kind, 0)) + 1
            doc["lifetime"][kind] = int(doc["lifetime"].get(kind, 0)) + 1
        state.save_queries(doc)
    return settings
