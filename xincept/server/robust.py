"""Screening of site updates before aggregation: a broken or hostile update is rejected, not averaged in.

An update is rejected, and reported by site, when its packed head does not match the global head (its size), when it holds NaN or infinite values, or when its distance from the global weights exceeds
``max_norm`` (0 turns the absolute bound off) or ``max_ratio`` times the median distance of the round's
updates (with three or more sites; 0 turns it off). The round goes on with the other sites.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xincept.common.packing import layout_from_shapes
from xincept.head_message import arrays_from


def update_problem(arrays: dict[str, np.ndarray], global_state: dict[str, torch.Tensor],
                   shapes: dict[str, tuple[int, ...]], max_norm: float) -> str | float:
    """Why this update cannot be aggregated, or its distance from the global weights."""
    if set(arrays) != set(shapes):
        missing, extra = sorted(set(shapes) - set(arrays)), sorted(set(arrays) - set(shapes))
        return f"its arrays differ from the global head (missing {missing[:3]}, unexpected {extra[:3]})"
    sq = 0.0
    for name, arr in arrays.items():
        if tuple(arr.shape) != shapes[name]:
            return f"{name} has shape {tuple(arr.shape)}, expected {shapes[name]}"
        if not np.isfinite(arr).all():
            return f"{name} holds non-finite values (NaN or infinity)"
        sq += float(((arr.astype(np.float64) - global_state[name].double().numpy()) ** 2).sum())
    norm = sq**0.5
    if max_norm > 0 and norm > max_norm:
        return f"update norm {norm:.3g} exceeds the bound {max_norm:g} (max-update-norm)"
    return norm


def screen_updates(replies: dict[int, Any], nodes: dict[int, str], global_state: dict[str, torch.Tensor],
                   shapes: dict[str, tuple[int, ...]], max_norm: float = 0.0,
                   max_ratio: float = 0.0) -> tuple[dict[int, Any], dict[str, str], dict[str, float]]:
    """(accepted replies by node id, reasons by site name for the rejected ones, update norms by site)."""
    norms, rejected = {}, {}
    layout = layout_from_shapes(shapes)
    for node, msg in replies.items():
        try:
            arrays = arrays_from(msg.content, layout)  # the packed head, read with the layout the server sent
            problem = update_problem(arrays, global_state, shapes, max_norm)
        except (KeyError, TypeError, ValueError) as exc:  # a malformed reply (PackingError: a vector of another size)
            problem = f"malformed reply ({exc})"
        if isinstance(problem, str):
            rejected[nodes[node]] = problem
        else:
            norms[node] = problem
    if max_ratio > 0 and len(norms) >= 3:
        median = float(np.median(list(norms.values())))
        for node, norm in list(norms.items()):
            if median > 0 and norm > max_ratio * median:
                rejected[nodes[node]] = f"update norm {norm:.3g} is over {max_ratio:g}x the round's median {median:.3g} (max-norm-ratio)"
                del norms[node]
    accepted = {node: replies[node] for node in norms}
    return accepted, rejected, {nodes[n]: round(v, 4) for n, v in norms.items()}
