"""Phase validate: every model that may travel is scored at every site; only released counts come back.

- the global model (head softmax, and the final classifier) on each site's test split;
- leave-one-site-out: the model trained without site i, scored at site i (``loso``);
- local-only: each site trains on its own images and scores at home (``local_only``); the local
  model never leaves its site, so it is scored there only.
Results go to ``cross_site`` as ``{data_site: {model_name: metrics}}`` (NVFlare's layout).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from flwr.app import RecordDict

from xincept.common.pooled_metrics import pooled_metrics
from xincept.head_message import head_content
from xincept.server.context import Federation

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "n", "withheld_cells")


def score_at_sites(fed: Federation, state: dict[str, torch.Tensor], booster: bytes | None,
                   split: str = "test") -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per-site metrics and the pooled metrics of one model, from each site's released counts."""
    extra = {"split": split, **({"booster": booster} if booster else {})}
    replies = fed.ask("evaluate.head", head_content(state, config=fed.config(**extra)))
    releases = {fed.nodes[n]: dict(m.content["metrics"]) for n, m in replies.items()}
    classes = list(fed.classes or [])
    per_site = {s: pooled_metrics([r], classes) for s, r in sorted(releases.items())}
    return per_site, pooled_metrics([releases[s] for s in sorted(releases)], classes)


def local_only(fed: Federation) -> dict[str, dict[str, Any]]:
    """Each site's local-only model, scored on its own test split."""
    replies = fed.ask("train.local", RecordDict({"config": fed.config()}))
    return {fed.nodes[n]: pooled_metrics([dict(m.content["metrics"])], list(fed.classes or []))
            for n, m in sorted(replies.items(), key=lambda x: fed.nodes[x[0]])}


def summary(m: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers and the per-class table of one cross-site cell (curves stay in ``sites``)."""
    out = {k: m.get(k) for k in SUMMARY_KEYS}
    out["per_class"] = m.get("per_class")
    out["confusion"] = m.get("confusion")
    return out
