"""Marks every image the project writes carries where they apply: random backbone weights, synthetic data.

A PNG (a report plot, a Grad-CAM overlay) can travel without its report; the warning travels inside it, as a red
banner above the picture.
"""

from __future__ import annotations

import io
from typing import Any

SYNTHETIC = "SYNTHETIC DATA: generated images, not patients' blood smears"


def marks_for(meta: dict[str, Any]) -> list[str]:
    """The marks a bundle's or run's outputs carry, from its model.json content."""
    out = []
    if meta.get("warning"):
        out.append(str(meta["warning"]))
    if (meta.get("data_summary") or {}).get("synthetic"):
        out.append(SYNTHETIC)
    return out


def stamp_png(data: bytes, marks: list[str]) -> bytes:
    """``data`` with one red banner line per mark above the picture (unchanged when there is no mark)."""
    if not marks:
        return data
    from PIL import Image, ImageDraw, ImageFont

    img = Image.open(io.BytesIO(data)).convert("RGB")
    try:
        font = ImageFont.load_default(size=max(11, img.width // 70))
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    line_h = int(font.getbbox("Ag")[3] + 6)
    out = Image.new("RGB", (img.width, img.height + line_h * len(marks) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    draw.rectangle([0, 0, img.width, line_h * len(marks) + 2], fill=(178, 34, 34))
    for i, mark in enumerate(marks):
        draw.text((6, 2 + i * line_h), mark, fill=(255, 255, 255), font=font)
    out.paste(img, (0, line_h * len(marks) + 4))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
