"""Augmentation of thesis Table 3.2: zoom 0.2, crop, width shift 0.2, rotation 15 deg, horizontal flip.

Each augmented view is deterministic in (image content, view index, seed), so cached views
stay valid and every rerun sees the same training data.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


def view_seed(sha256: str, view: int, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{sha256}:{view}:{seed}".encode()).digest()[:8], "little") % (2**63)


def _border_fill(img: "Image.Image") -> tuple[int, int, int]:
    """Median colour of the border pixels: the smear background, used where the image moves away."""
    import numpy as np

    a = np.asarray(img)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(v) for v in np.median(border, axis=0))  # type: ignore[return-value]


def augment(img: "Image.Image", sha256: str, view: int, seed: int) -> "Image.Image":
    """One augmented view of an RGB PIL image (same size as the input)."""
    import torch
    from torchvision.transforms import v2

    size = img.size[::-1]
    pipeline = v2.Compose(
        [
            v2.RandomAffine(degrees=15, translate=(0.2, 0.0), scale=(0.8, 1.2), fill=_border_fill(img)),
            v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
        ]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(view_seed(sha256, view, seed))
        return pipeline(img)
