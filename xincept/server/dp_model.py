"""Whole-model DP at the server (``dp-mode whole-model``): the linear head by full-batch DP gradient descent over
the sites (xincept.common.dp_linear), from their noisy releases only.

One ``query.dp_stats`` (each site's noisy feature sum and class counts: the feature mean to centre by, the number
of images to normalise by, the log class prior that is the head's fixed bias), then ``dp-steps`` ``train.dp_step``
messages (the weights and the mean out, each site's noisy clipped gradient sum of the weights back). Everything the server does with them is post-processing. A site that drops out
leaves the later sums without it (the run goes on above --min-sites, as in the head rounds).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict

from xincept.common.dp_linear import LinearProbe, ServerDP, config_of, plan_of
from xincept.server.context import Federation

log = logging.getLogger(__name__)


def spent_by_site(replies: dict[str, Message], spent: dict[str, dict[str, float]]) -> None:
    """Each site's run epsilon as it last reported it (the ledger only grows)."""
    for site, m in replies.items():
        metrics = m.content["metrics"]
        spent[site] = {"epsilon": float(metrics["dp-epsilon"]), "delta": float(metrics["dp-delta"])}


def _release_sum(fed: Federation, message_type: str, content: RecordDict, extra: dict[str, Any], record: str, key: str,
                 shape: tuple[int, ...], secure: dict[str, Any]) -> tuple[np.ndarray, dict[str, Message]]:
    """The sum of the sites' noisy releases and, by site name, the replies that carried them (their spent budgets):
    in the clear, or through secure aggregation (the server then sees the sum only; ``secure`` collects the rounds'
    survivors and bytes). A site lost after its release is among the replies: its release was made."""
    if not fed.settings.secure_aggregation:
        replies = fed.ask(message_type, RecordDict({**dict(content.items()), "config": fed.config(**extra)}))
        total = np.sum([m.content[record][key].numpy() for m in replies.values()], axis=0)
        return total, {fed.nodes[n]: m for n, m in replies.items()}
    from xincept.server.secure_rounds import secure_sum

    result = secure_sum(fed, message_type, content, extra)
    secure["rounds"] = secure.get("rounds", 0) + 1
    secure["with_dropouts"] = secure.get("with_dropouts", 0) + bool(result.dropped)
    for site, b in result.bytes_up.items():
        secure.setdefault("bytes_up", {})[site] = secure.get("bytes_up", {}).get(site, 0) + b
    return result.total.reshape(shape), {result.site_of[n]: m for n, m in result.replies.items()}


def train_whole_model_dp(fed: Federation, in_dims: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The trained linear head's state (a :class:`LinearProbe`) and facts about the training."""
    settings, k = fed.settings, len(fed.classes or [])
    cfg = config_of(settings)
    sigma, planned = plan_of(settings)
    t0 = time.perf_counter()
    spent: dict[str, dict[str, float]] = {}
    secure: dict[str, Any] = {}
    dim = sum(in_dims)
    total, replies = _release_sum(fed, "query.dp_stats", RecordDict(), {"server-round": 0}, "stats", "sums",
                                  (dim + k,), secure)
    spent_by_site(replies, spent)
    server = ServerDP(dim, k, cfg)
    mean = server.set_stats(total)
    log.info("whole-model DP: %d site(s), noise multiplier %.2f per step%s, %d steps, about %.0f training %ss (noisy)",
             len(replies), sigma, " (shared among the sites, summed by secure aggregation)" if secure else "", cfg.steps,
             server.n_hat, cfg.unit)
    sites_per_step = []
    steps_by_site = {site: 0 for site in replies}  # who released its feature sum, and how many steps each
    for step in range(1, cfg.steps + 1):
        content = RecordDict({"arrays": ArrayRecord({"w": Array(server.w), "mean": Array(mean)})})
        total, replies = _release_sum(fed, "train.dp_step", content, {"dp-step": step, "server-round": step}, "gradient",
                                      "sum", server.w[:-1].shape, secure)
        spent_by_site(replies, spent)
        server.step(total)
        sites_per_step.append(len(replies))
        for site in replies:
            steps_by_site[site] += 1
        if step % 20 == 0 or step == cfg.steps:
            log.info("whole-model DP: step %d/%d (%.1f s)", step, cfg.steps, time.perf_counter() - t0)
    probe = LinearProbe(in_dims, k).set_weights(server.w, mean)
    info = {"steps": cfg.steps, "noise_multiplier": sigma, "config": cfg.describe(), "noisy_training_units": server.n_hat,
            "sites_per_step": sites_per_step, "seconds": round(time.perf_counter() - t0, 2),
            "planned_releases": [r.__dict__ for r in planned], "spent": spent, "steps_by_site": steps_by_site,
            "noise": ("each site adds 1/sqrt(secagg threshold) of the noise's standard deviation; the sums leave only "
                      "through secure aggregation, so the sum the server sees carries all of it (distributed DP)"
                      if secure else "each site adds all of the noise (local DP releases)"),
            **({"secure_aggregation": secure} if secure else {})}
    return probe.trainable_state(), info
