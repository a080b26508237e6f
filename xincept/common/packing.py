"""A head's state as one flat float32 vector and a layout (its parameters' names and shapes, in order).

Flower moves every array of a message as its own objects (the array, then its chunks), and in a deployment each
object is one request through the SuperLink: the 18 tensors of a fused head made about 40 requests per hop and
four hops per round, which, not the arithmetic, set the deployed round time (bench/deployed.py). Packed, a head
is one array. The layout travels beside it, so the receiver rebuilds exactly the named state it would have
received unpacked and checks it the same way (names, shapes; a size that does not add up is refused).
"""

from __future__ import annotations

import math

import numpy as np
import torch


class PackingError(ValueError):
    """A packed vector and its layout do not describe the same state."""


def layout_of(state: dict[str, torch.Tensor]) -> list[str]:
    """``["name:d0,d1", ...]`` in the state's order (a scalar has an empty shape: ``"name:"``)."""
    return layout_from_shapes({k: tuple(v.shape) for k, v in state.items()})


def layout_from_shapes(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    return [f"{k}:{','.join(str(d) for d in shape)}" for k, shape in shapes.items()]


def parse_layout(layout: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    out: list[tuple[str, tuple[int, ...]]] = []
    seen: set[str] = set()
    for entry in layout:
        name, sep, dims = str(entry).rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if dims else ()
        except ValueError:
            shape = (-1,)
        if not sep or not name or name in seen or any(d < 0 for d in shape):
            raise PackingError(f"layout entry {entry!r} is not 'name:d0,d1,...' with a new name and sizes >= 0")
        seen.add(name)
        out.append((name, shape))
    return out


def pack(state: dict[str, torch.Tensor], order: list[str] | None = None) -> np.ndarray:
    """The tensors of ``state`` (in ``order`` of names, default the state's own) as one float32 vector."""
    names = list(state) if order is None else list(order)
    if set(names) != set(state):
        missing, extra = sorted(set(names) - set(state)), sorted(set(state) - set(names))
        raise PackingError(f"the state does not match the layout (missing {missing[:3]}, unexpected {extra[:3]})")
    parts = []
    for k in names:
        v = state[k]
        if not torch.is_floating_point(v):
            raise PackingError(f"{k} is {v.dtype}; only floating-point tensors are packed")
        parts.append(v.detach().to("cpu", torch.float32).reshape(-1).numpy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def unpack(vector: np.ndarray, layout: list[str]) -> dict[str, torch.Tensor]:
    """The named float32 tensors ``pack`` flattened into ``vector``; refuses a vector of another size or kind."""
    entries = parse_layout(layout)
    vec = np.asarray(vector)
    if vec.ndim != 1 or vec.dtype != np.float32:
        raise PackingError(f"a packed head is a 1-D float32 vector, not {vec.dtype} of shape {vec.shape}")
    sizes = [math.prod(shape) for _, shape in entries]
    if vec.size != sum(sizes):
        raise PackingError(f"the packed head holds {vec.size} values; its layout of {len(entries)} tensors needs {sum(sizes)}")
    out, at = {}, 0
    for (name, shape), n in zip(entries, sizes):
        out[name] = torch.from_numpy(vec[at:at + n].copy()).reshape(shape)
        at += n
    return out
