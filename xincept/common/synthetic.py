"""Generated blood-smear-like images (SYNTHETIC, not patient data): one stained cell per image, shape and stain by class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("Benign", "Early", "Pre", "Pro")
# (nucleus RGB, cell radius fraction, nucleus radius fraction of cell)
STYLES = {
    "Benign": ((120, 60, 150), 0.22, 0.45),
    "Early": ((90, 40, 140), 0.28, 0.70),
    "Pre": ((70, 30, 110), 0.32, 0.80),
    "Pro": ((150, 70, 170), 0.36, 0.60),
}


def cell_image(cls: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """An RGB uint8 image: pink background, pale cytoplasm and a class-styled nucleus."""
    color, rc, rn = STYLES.get(cls, STYLES[CLASSES[sum(map(ord, cls)) % len(CLASSES)]])
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = (235, 200, 205)
    cy, cx = size / 2 + rng.normal(0, size * 0.04, 2)
    r = size * rc * rng.uniform(0.9, 1.1)
    d = np.hypot(yy - cy, xx - cx)
    img[d < r] = (215, 170, 200)
    img[d < r * rn] = np.array(color) * rng.uniform(0.9, 1.1)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image_folder(root: Path, per_class: int = 10, size: int = 64, classes: tuple[str, ...] = CLASSES,
                       seed: int = 0, ext: str = ".png") -> Path:
    """Write ``root/<class>/<class>-NNN<ext>`` images; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls in classes:
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(cell_image(cls, rng, size)).save(folder / f"{cls}-{i + 1:03d}{ext}")
    return root
