"""Phase head rounds: FedAvg family over the fused head's weights, checkpointed after every round."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xincept.common.errors import XinceptError
from xincept.common.head import new_head_for
from xincept.common.packing import layout_of, unpack
from xincept.common.pooled_metrics import pooled_metrics
from xincept.head_message import head_arrays, head_content, packed_vector
from xincept.server.context import Federation
from xincept.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from xincept.server.robust import screen_updates
from xincept.server.secure_rounds import secure_round
from xincept.server.strategies import make_strategy, restore_strategy_state, set_current, set_round, strategy_state

log = logging.getLogger(__name__)


class StoppedAfterRound(Exception):
    """Raised by ``stop_after_round`` to imitate a crash in tests."""


@dataclass
class HeadResult:
    state: dict[str, torch.Tensor]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    selected_round: int = 0
    seconds: float = 0.0
    rejected: dict[str, list[str]] = field(default_factory=dict)  # site -> reasons, over all rounds
    member_rounds: list[int] = field(default_factory=list)  # each head's selected round (several heads only)


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return int(sum(v.numel() * v.element_size() for v in state.values()))


def round_releases(replies: dict, nodes: dict[int, str]) -> dict[str, dict[str, Any]]:
    """Each site's released evaluation counts, by site name."""
    return {nodes[n]: dict(m.content["metrics"]) for n, m in replies.items()}


def run_head_rounds(fed: Federation, stats: list[tuple[np.ndarray, np.ndarray]], ckpt_dir: Path,
                    label: str = "global", stop_after_round: int = 0, member: int = 0,
                    n_train: dict[str, int] | None = None) -> HeadResult:
    """R rounds of E local epochs at the federation's sites; resumes from ``ckpt_dir`` when ``settings.resume``.

    ``member`` numbers the head when several are trained (``head-members``): it sets the initialisation and,
    at the sites, the dropout masks; each member has its own ``ckpt_dir``.

    The returned head is the round with the best validation accuracy pooled over the sites (ties: lower
    loss), as centralized early stopping selects its epoch, or the last round (``select-round last``).
    """
    settings, nodes, classes = fed.settings, fed.nodes, list(fed.classes or [])
    ckpt = load_checkpoint(ckpt_dir) if settings.resume else None
    head = new_head_for([len(m) for m, _ in stats], len(classes), settings.run_config().head, member)
    head.set_standardization(stats)
    state = head.trainable_state()
    # the input standardisation is fixed by the embed phase; it is never aggregated (the strategies' float64 arithmetic
    # would change its last bits every round, and a site pins it: a changed standardisation is refused)
    fixed_norms = {k: v.clone() for k, v in state.items() if k.startswith("norms.")}
    strategy = make_strategy(settings, len(nodes))
    result = HeadResult(state)
    best_key: tuple[float, float] = (-1.0, float("-inf"))
    best_state = None
    start = 1
    if ckpt is not None:
        # in the fresh head's order (a checkpoint file lists its tensors sorted): the packed head, and with it a FedAdam
        # moment restored below, must line up with the order of the rounds before the interruption
        if set(ckpt.head_state) != set(state):
            raise XinceptError(f"the checkpoint in {ckpt_dir} holds another head than these settings build; resume with the "
                               "settings of the interrupted run, or start a new run without --resume")
        state = {k: ckpt.head_state[k] for k in state}
        result.rounds, start = ckpt.rounds, ckpt.completed_round + 1
        restore_strategy_state(strategy, ckpt.strategy_state)
        best_state, result.selected_round = ckpt.best_state, int(ckpt.context.get("best_round", 0))
        result.rejected = dict(ckpt.context.get("rejected", {}))
        if best_state is not None and result.selected_round:
            b = result.rounds[result.selected_round - 1]["val"]["global"]
            best_key = (b["accuracy"], -b["loss"])
        log.info("%s: resuming after round %d from %s", label, ckpt.completed_round, ckpt_dir)
    reference = {k: tuple(v.shape) for k, v in state.items()}
    layout = layout_of(state)  # the head travels packed (xincept.head_message): one array per message, not one per tensor
    dtypes = {k: v.dtype for k, v in state.items()}
    t0 = time.perf_counter()

    def record_val(releases: dict[str, dict[str, Any]], evaluated: dict[str, torch.Tensor]) -> None:
        """Validation counts of the head after the last recorded round; keeps the best head."""
        nonlocal best_state, best_key
        rec = result.rounds[-1]
        glob = pooled_metrics([releases[s] for s in sorted(releases)], classes)  # fixed order: the same float sums
        sites = {s: pooled_metrics([rel], classes) for s, rel in sorted(releases.items())}
        rec["val"] = {"global": {k: glob[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "loss", "n")},
                      "sites": {s: {k: v[k] for k in ("accuracy", "loss", "n")} for s, v in sites.items()}}
        acc, loss = glob["accuracy"], glob["loss"]
        if acc is None or loss is None:  # no validation images released: this round cannot be chosen
            log.warning("%s round %d/%d: no validation counts", label, rec["round"], settings.rounds)
            return
        r = rec["round"]  # every round in metrics.json and with -v; on screen the global model's first, every 10th, last
        shown = label == "global" and (r in (1, settings.rounds) or r % 10 == 0)
        log.log(logging.INFO if shown else logging.DEBUG,
                "%s round %d/%d: val accuracy %.3f, loss %.4f", label, r, settings.rounds, acc, loss)
        if (acc, -loss) > best_key:  # ties: lower loss, as in centralized early stopping
            best_state, best_key, result.selected_round = ({k: v.clone() for k, v in evaluated.items()}, (acc, -loss),
                                                           rec["round"])

    def checkpoint(r: int) -> None:
        save_checkpoint(ckpt_dir, Checkpoint(r, state, result.rounds, strategy_state(strategy),
                                             {"classes": classes, "best_round": result.selected_round, "rejected": result.rejected},
                                             best_state=best_state))

    for r in range(start, settings.rounds + 1):
        tr = time.perf_counter()
        arrays = head_arrays(state)
        set_current(strategy, arrays)
        set_round(strategy, settings, r)
        # the sites first score the head they receive (the last round's result) on their validation split: one
        # message per round instead of two; the last round's head is scored after the loop
        pending_val = bool(result.rounds) and "val" not in result.rounds[-1]
        extra = {"server-round": r, "member": member, **({"evaluate-split": "val"} if pending_val else {})}
        secure = None
        if settings.secure_aggregation:  # the server learns the sum of the updates only (xincept.server.secure_rounds)
            secure = secure_round(fed, head_content(state, arrays), extra, n_train or {})
            replies = secure.replies
        else:
            replies = fed.ask("train.head", head_content(state, arrays, config=fed.config(**extra)))
        # the replies' sites by name: under secure aggregation a site lost after its masked update still counts
        names = secure.site_of if secure is not None else dict(nodes)
        if pending_val:
            record_val({names[n]: dict(m.content["val"]) for n, m in replies.items()}, state)
            for m in replies.values():  # Flower's strategies aggregate replies of one MetricRecord
                del m.content["val"]
        if secure is not None:
            rejected, norms = {}, {}  # no site's own update is seen, so none can be screened
            new_vector = packed_vector(arrays).astype(np.float64) + secure.total
        else:
            accepted, rejected, norms = screen_updates(replies, nodes, state, reference, settings.max_update_norm,
                                                       settings.max_norm_ratio)
            for site, why in rejected.items():
                log.warning("%s round %d: rejected the update of site %s: %s", label, r, site, why)
                result.rejected.setdefault(site, []).append(f"round {r}: {why}")
            if not accepted:
                raise XinceptError(f"{label} round {r}: every update was rejected ({rejected})")
            ordered = [accepted[n] for n in sorted(accepted, key=lambda n: nodes[n])]  # fixed order: sums are reproducible
            agg, _ = strategy.aggregate_train(r, ordered)
            if agg is None:
                raise XinceptError(f"{label} round {r}: no update could be aggregated")
            new_vector = packed_vector(agg)
        # back to each tensor's own dtype: Flower's FedAdam does its arithmetic in float64 and would double the bytes
        state = {k: v.to(dtypes[k]) for k, v in unpack(new_vector.astype(np.float32), layout).items()}
        state.update({k: v.clone() for k, v in fixed_norms.items()})
        result.rounds.append({
            "round": r,
            "member": member,
            "seconds": round(time.perf_counter() - tr, 3),
            "ended_at": round(time.time(), 3),  # wall clock (Unix time): lines a round up with other logs
            "sites": sorted(names[n] for n in replies),  # who contributed (a site lost under a quorum is not here)
            "train_loss": {names[n]: float(m.content["metrics"]["train-loss"]) for n, m in replies.items()
                           if "train-loss" in m.content["metrics"]},
            "update_norm": norms,
            "rejected": sorted(rejected),
            "privacy": {names[n]: {k.removeprefix("dp-"): float(v) for k, v in m.content["metrics"].items() if k.startswith("dp-")}
                        for n, m in replies.items() if "dp-epsilon" in m.content["metrics"]},
            **({"secure_aggregation": {"survivors": secure.survivors, "dropped": secure.dropped,
                                       "bytes_up": secure.bytes_up, "seconds": round(secure.seconds, 3)}} if secure else {}),
        })
        if r == settings.rounds:
            val = fed.ask("evaluate.head", head_content(state, config=fed.config(split="val")))
            record_val(round_releases(val, nodes), state)
        checkpoint(r)
        if stop_after_round == r:
            raise StoppedAfterRound(f"stopped after round {r} (stop-after-round)")
    result.seconds = time.perf_counter() - t0
    if settings.select_round == "best-val" and best_state is not None:
        result.state = best_state
    else:
        result.state, result.selected_round = state, settings.rounds
    log.info("%s head: round %d of %d (%s)", label, result.selected_round, settings.rounds, settings.select_round)
    return result
