"""Grad-CAM explanations of a bundle's predictions, for images at this site."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from xincept.client.predict import backbone_config_for, verify_backbones
from xincept.common.atomic import write_json_atomic
from xincept.common.backbones import load_backbones
from xincept.common.bundle import read_bundle
from xincept.common.errors import SettingError
from xincept.common.progress import track

log = logging.getLogger(__name__)


def explain_images(model_dir: Path, images: list[Path], out: Path, weights_dir: Path | None = None,
                   target: str | None = None) -> list[dict[str, Any]]:
    """One PNG per image in ``out`` and ``out/explanations.json``; unreadable images are reported, not fatal."""
    from xincept.common.gradcam import explain_image, overlay_png

    model, meta = read_bundle(model_dir)
    if target is not None and target not in model.classes:
        raise SettingError(f"--class {target!r} is not one of the bundle's classes {model.classes}")
    cfg = replace(backbone_config_for(meta, weights_dir, "cpu"), precision="fp32")  # gradients need the plain fp32 model
    backbones = load_backbones(cfg)
    verify_backbones(meta, backbones)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for i, path in enumerate(track(images, "Grad-CAM", total=len(images))):
        path = Path(path)
        try:
            exp = explain_image(model, backbones, path, None if target is None else model.classes.index(target))
        except (OSError, ValueError) as exc:
            rows.append({"image": str(path), "error": f"unreadable or corrupt image: {exc}"})
            continue
        name = f"{i:03d}_{path.stem}_gradcam.png"
        (out / name).write_bytes(overlay_png(exp, model.classes, path.name))
        rows.append({"image": str(path), "class": model.classes[exp.target], "overlay": str(out / name),
                     "probabilities": {c: round(float(p), 6) for c, p in zip(model.classes, exp.proba)},
                     "heatmap_std": {k: float(v.std()) for k, v in {**exp.heatmaps, "fused": exp.fused}.items()},
                     "no_positive_evidence": exp.no_evidence,
                     "explains": "the fused head's logit for the class the bundle's classifier predicts (XGBoost is not differentiable)",
                     **({"warning": meta["warning"]} if meta.get("warning") else {})})
    write_json_atomic(out / "explanations.json", rows)
    return rows
