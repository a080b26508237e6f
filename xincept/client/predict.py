"""Predict classes of images with a model bundle, after proving the local backbones match it."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from xincept.common.backbones import Backbone, load_backbones
from xincept.common.bundle import read_bundle
from xincept.common.config import BackboneConfig
from xincept.common.data import ImageRecord, read_image
from xincept.common.errors import BundleError
from xincept.common.embed import embed_records

log = logging.getLogger(__name__)


def backbone_config_for(meta: dict[str, Any], weights_dir: Path | None, device: str = "auto") -> BackboneConfig:
    """The backbone settings a bundle was trained with (random weights only if the bundle used them)."""
    return BackboneConfig(
        names=tuple(b["name"] for b in meta["backbones"]),
        input_size=int(meta["input_size"]),
        pretrained=meta.get("weights") != "random",
        random_backbones=tuple(b["name"] for b in meta["backbones"] if b.get("weights") == "random"),
        weights_dir=weights_dir,
        device=device,
        precision="fp32" if meta.get("embedding_path", {}).get("dtype") == "float32" else "auto",
    )


def verify_backbones(meta: dict[str, Any], backbones: list[Backbone]) -> None:
    """Refuse a bundle whose backbones differ from the local ones (fingerprint or preprocessing)."""
    for want, have in zip(meta["backbones"], backbones):
        if want["fingerprint"] != have.fingerprint:
            raise BundleError(
                f"backbone {have.name}: the bundle was trained with weights {want['fingerprint'][:12]}… ({want['weights']}), "
                f"but the local weights are {have.fingerprint[:12]}… ({have.weights}). Stage the same weights the model "
                "was trained with (--weights-dir), or use a bundle trained on this site's weights"
            )
        if want["preprocessing"] != have.data_config:
            raise BundleError(f"backbone {have.name}: preprocessing differs from the bundle's ({want['preprocessing']} vs {have.data_config}); use the xincept and timm versions named in model.json")


def predict_images(model_dir: Path, images: list[Path], cache_dir: Path, weights_dir: Path | None = None,
                   device: str = "auto") -> list[dict[str, Any]]:
    """One result per image: ``{"image", "class", "probabilities"}`` or ``{"image", "error"}``."""
    model, meta = read_bundle(model_dir)
    cfg = backbone_config_for(meta, weights_dir, device)
    backbones = load_backbones(cfg)
    verify_backbones(meta, backbones)
    results: list[dict[str, Any]] = []
    records: list[ImageRecord] = []
    slots: list[int] = []
    for path in images:
        try:
            data, _, _ = read_image(Path(path))
        except FileNotFoundError:
            results.append({"image": str(path), "error": "file not found"})
            continue
        except Exception as exc:
            results.append({"image": str(path), "error": f"unreadable or corrupt image: {exc}"})
            continue
        records.append(ImageRecord(path=Path(path), label=0, sha256=hashlib.sha256(data).hexdigest(), group=""))
        slots.append(len(results))
        results.append({"image": str(path)})
    if records:
        emb = embed_records(records, backbones, cache_dir, cfg, show_progress=len(records) > 8)
        proba = model.predict_proba([emb.base[b.name] for b in backbones])
        for slot, p in zip(slots, proba):
            results[slot]["class"] = model.classes[int(p.argmax())]
            results[slot]["probabilities"] = {c: round(float(v), 6) for c, v in zip(model.classes, p)}
    if meta.get("warning"):
        for r in results:
            r["warning"] = meta["warning"]
    return results
