"""Phase validate: every model that may travel is scored at every site; only released counts come back.

- the global model (head softmax, and the final classifier) on each site's test split;
- leave-one-site-out: the model trained without site i, scored at site i (``loso``);
- local-only: each site trains on its own images and scores at home (``local_only``); the local
  model never leaves its site, so it is scored there only.
Results go to ``cross_site`` as ``{data_site: {model_name: metrics}}`` (NVFlare's layout).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from xincept.common.fedconfig import FedSettings
from xincept.common.pooled_metrics import pooled_metrics
from xincept.head_message import head_content

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "n", "withheld_cells")


def score_at_sites(ask: Callable, grid: Grid, nodes: dict[int, str], settings: FedSettings, classes: list[str],
                   state: dict[str, torch.Tensor], booster: bytes | None, config: Callable[..., ConfigRecord],
                   split: str = "test") -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per-site metrics and the pooled metrics of one model, from each site's released counts."""
    extra = {"split": split, **({"booster": booster} if booster else {})}
    replies = ask(grid, nodes, "evaluate.head", head_content(state, config=config(**extra)),
                  settings.round_timeout)
    releases = {nodes[n]: dict(m.content["metrics"]) for n, m in replies.items()}
    per_site = {s: pooled_metrics([r], classes) for s, r in sorted(releases.items())}
    return per_site, pooled_metrics(list(releases.values()), classes)


def local_only(ask: Callable, grid: Grid, nodes: dict[int, str], settings: FedSettings, classes: list[str],
               config: Callable[..., ConfigRecord]) -> dict[str, dict[str, Any]]:
    """Each site's local-only model, scored on its own test split."""
    replies = ask(grid, nodes, "train.local", RecordDict({"config": config()}), settings.round_timeout)
    return {nodes[n]: pooled_metrics([dict(m.content["metrics"])], classes) for n, m in sorted(replies.items(), key=lambda x: nodes[x[0]])}


def summary(m: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers and the per-class table of one cross-site cell (curves stay in ``sites``)."""
    out = {k: m.get(k) for k in SUMMARY_KEYS}
    out["per_class"] = m.get("per_class")
    out["confusion"] = m.get("confusion")
    return out
