"""How a head travels in a Flower message: one packed array (record ``arrays``, key ``head``) and its layout
(record ``layout``, key ``names``), see :mod:`xincept.common.packing`.

The server sends both; a site rebuilds the named state from them and answers with its trained head packed in
the same order, so the reply mirrors the request (one float32 vector of the same size) and the server reads it
with the layout it sent.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from xincept.common.packing import PackingError, layout_of, pack, unpack

HEAD_KEY = "head"


def head_arrays(state: dict[str, torch.Tensor], order: list[str] | None = None) -> ArrayRecord:
    """``state`` packed into the one-array record a message carries (``order``: the layout's names)."""
    return ArrayRecord({HEAD_KEY: Array(pack(state, order))})


def head_content(state: dict[str, torch.Tensor], arrays: ArrayRecord | None = None, **records) -> RecordDict:
    """A request carrying a head: its packed arrays (``arrays`` when already packed), its layout, other records."""
    return RecordDict({"arrays": arrays if arrays is not None else head_arrays(state),
                       "layout": ConfigRecord({"names": layout_of(state)}), **records})


def request_layout(content: RecordDict) -> list[str]:
    rec = content.config_records.get("layout")
    if rec is None or not isinstance(rec.get("names"), list):
        raise PackingError("the message carries a head without its layout (record 'layout', key 'names')")
    return [str(n) for n in rec["names"]]


def packed_vector(arrays: ArrayRecord) -> np.ndarray:
    if set(arrays.keys()) != {HEAD_KEY}:
        raise PackingError(f"a head travels as one packed array named {HEAD_KEY!r}, not {sorted(arrays.keys())[:5]}")
    return arrays[HEAD_KEY].numpy()


def state_from(content: RecordDict, layout: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The named head state a message carries (``layout``: the one the reader sent; default the message's own)."""
    return unpack(packed_vector(content["arrays"]), request_layout(content) if layout is None else layout)


def arrays_from(content: RecordDict, layout: list[str]) -> dict[str, np.ndarray]:
    """The same as numpy arrays (what the server screens before aggregating)."""
    return {k: v.numpy() for k, v in state_from(content, layout).items()}
