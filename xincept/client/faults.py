"""Fault injection for robustness drills: a site that sends a broken update (NaN weights).

Used by the tests and by operators rehearsing what the server does with a faulty hospital; never
enabled unless a ClientApp is built with this mod.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


def nan_update_mod(site: str) -> Mod:
    """A mod that replaces the head weights ``site`` sends in train.head with NaN."""

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type == "train.head" and not reply.has_error() and _site(msg, context) == site:
            arrays = reply.content["arrays"]
            reply.content["arrays"] = ArrayRecord({k: Array(np.full(a.shape, np.nan, dtype=a.numpy().dtype)) for k, a in arrays.items()})
        return reply

    return mod


def _site(msg: Message, context: Context) -> str:
    nc = context.node_config
    if "site" in nc:
        return str(nc["site"])
    return f"site-{nc.get('partition-id', '?')}"
