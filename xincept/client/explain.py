"""Grad-CAM explanations of a bundle's predictions, for images at this site."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from xincept.client.predict import backbone_config_for, predict_images, verify_backbones
from xincept.common.atomic import write_json_atomic
from xincept.common.backbones import load_backbones
from xincept.common.bundle import read_bundle
from xincept.common.config import default_cache_dir
from xincept.common.errors import SettingError
from xincept.common.progress import track

log = logging.getLogger(__name__)


def explain_images(model_dir: Path, images: list[Path], out: Path, weights_dir: Path | None = None,
                   target: str | None = None, cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """One PNG per image in ``out`` and ``out/explanations.json``; unreadable images are reported, not fatal.

    The class and probabilities are `predict`'s (:func:`predict_images`: the same function, embeddings and numbers);
    the heatmaps explain the fused head's logit for that class, through the plain fp32 backbones gradients need.
    """
    from xincept.common.gradcam import explain_image, overlay_png
    from xincept.common.marks import marks_for, stamp_png

    model, meta = read_bundle(model_dir)
    if target is not None and target not in model.classes:
        raise SettingError(f"--class {target!r} is not one of the bundle's classes {model.classes}")
    predicted = predict_images(model_dir, images, cache_dir or default_cache_dir(), weights_dir, "cpu")
    cfg = replace(backbone_config_for(meta, weights_dir, "cpu"), precision="fp32")  # gradients need the plain fp32 model
    backbones = load_backbones(cfg)
    verify_backbones(meta, backbones)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for i, (path, pred) in enumerate(track(list(zip(images, predicted)), "Grad-CAM", total=len(images))):
        path = Path(path)
        if "error" in pred:
            rows.append({"image": str(path), "error": pred["error"]})
            continue
        proba = np.array([pred["probabilities"][c] for c in model.classes])
        try:
            exp = explain_image(model, backbones, path, model.classes.index(target or pred["class"]))
        except (OSError, ValueError) as exc:
            rows.append({"image": str(path), "error": f"unreadable or corrupt image: {exc}"})
            continue
        exp = replace(exp, proba=proba)  # the overlay names predict's probabilities
        name = f"{i:03d}_{path.stem}_gradcam.png"
        (out / name).write_bytes(stamp_png(overlay_png(exp, model.classes, path.name), marks_for(meta)))
        rows.append({"image": str(path), "class": pred["class"], "overlay": str(out / name),
                     "probabilities": pred["probabilities"],
                     **({"explained_class": target} if target else {}),
                     "heatmap_std": {k: float(v.std()) for k, v in {**exp.heatmaps, "fused": exp.fused}.items()},
                     "no_positive_evidence": exp.no_evidence,
                     "explains": "the fused head's logit for the class the bundle's classifier predicts (XGBoost is not differentiable)",
                     **({"warning": meta["warning"]} if meta.get("warning") else {})})
    write_json_atomic(out / "explanations.json", rows)
    return rows
