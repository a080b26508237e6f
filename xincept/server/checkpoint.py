"""Per-round server checkpoints: the SuperLink does not resume a run, so the server resumes itself."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xincept.common.atomic import atomic_dir, write_json_atomic


@dataclass
class Checkpoint:
    completed_round: int
    head_state: dict[str, torch.Tensor]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    strategy_state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # e.g. FedAdam m_t, v_t
    context: dict[str, Any] = field(default_factory=dict)  # join and embed results, settings
    best_state: dict[str, torch.Tensor] | None = None  # the round with the best aggregated validation accuracy


def save_checkpoint(folder: Path, ckpt: Checkpoint) -> None:
    """Write ``folder`` whole (atomic): head, optimizer moments and history."""
    from safetensors.torch import save_file

    with atomic_dir(Path(folder)) as tmp:
        save_file({k: v.contiguous() for k, v in ckpt.head_state.items()}, str(tmp / "head.safetensors"))
        if ckpt.best_state is not None:
            save_file({k: v.contiguous() for k, v in ckpt.best_state.items()}, str(tmp / "best.safetensors"))
        flat = {f"{name}/{k}": v for name, d in ckpt.strategy_state.items() for k, v in d.items()}
        np.savez(tmp / "strategy.npz", **flat)
        write_json_atomic(tmp / "state.json", {"completed_round": ckpt.completed_round, "rounds": ckpt.rounds, "context": ckpt.context})


def load_checkpoint(folder: Path) -> Checkpoint | None:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "state.json").is_file():
        return None
    state = json.loads((folder / "state.json").read_text())
    strategy: dict[str, dict[str, np.ndarray]] = {}
    with np.load(folder / "strategy.npz") as npz:
        for key in npz.files:
            name, _, k = key.partition("/")
            strategy.setdefault(name, {})[k] = npz[key]
    best = folder / "best.safetensors"
    return Checkpoint(completed_round=state["completed_round"], head_state=load_file(str(folder / "head.safetensors")),
                      rounds=state["rounds"], strategy_state=strategy, context=state["context"],
                      best_state=load_file(str(best)) if best.is_file() else None)
