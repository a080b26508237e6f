"""The model bundle: ``model.json`` + ``head.safetensors`` + ``xgb.json``, written whole or not at all."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xincept.common.atomic import atomic_dir, write_json_atomic
from xincept.common.config import HeadConfig
from xincept.common.errors import BundleError
from xincept.common.head import member_count
from xincept.common.model import XinceptModel

BUNDLE_FORMAT = "xincept-bundle/1"
FILES = ("model.json", "head.safetensors", "xgb.json")


def write_bundle(path: Path, model: XinceptModel, meta: dict[str, Any]) -> None:
    """Write the bundle to ``path`` (a folder) atomically, replacing an older one."""
    from safetensors.torch import save_file

    head = model.head
    info = {
        "format": BUNDLE_FORMAT,
        **meta,
        "classes": model.classes,
        "num_classes": len(model.classes),
        "head": {"in_dims": head.in_dims, "embedding_dim": head.embedding_dim, "config": _head_cfg(head.cfg),
                 "members": member_count(head.state_dict())},
        "classifier": ({"kind": "xgboost", "features": model.xgb_features,
                        "base_margin": "head-logits" if model.xgb_margin == "head" else "none",
                        "best_iteration": getattr(model.booster, "best_iteration", None)}
                       if model.booster is not None else {"kind": "head-softmax", "features": "embedding"}),
    }
    with atomic_dir(Path(path)) as tmp:
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp / "head.safetensors"))
        if model.booster is not None:
            model.booster.save_model(str(tmp / "xgb.json"))
        write_json_atomic(tmp / "model.json", info)


def _head_cfg(cfg: HeadConfig) -> dict:
    d = asdict(cfg)
    d["fusion_widths"] = list(d["fusion_widths"])
    return d


def read_meta(path: Path) -> dict[str, Any]:
    path = Path(path)
    missing = [f for f in FILES[:2] if not (path / f).is_file()]
    if missing:
        raise BundleError(f"model bundle {path} is incomplete (missing {missing}): pass the OUT/model folder a training run wrote")
    try:
        meta = json.loads((path / "model.json").read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path / 'model.json'} is not valid JSON ({exc}): re-export the bundle") from exc
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path / 'model.json'} has format {meta.get('format')!r}, expected {BUNDLE_FORMAT!r}: use a matching xincept version")
    if meta["classifier"]["kind"] == "xgboost" and not (path / "xgb.json").is_file():
        raise BundleError(f"model bundle {path} is incomplete (missing ['xgb.json']): pass the OUT/model folder a training run wrote")
    return meta


def read_bundle(path: Path) -> tuple[XinceptModel, dict[str, Any]]:
    import xgboost as xgb
    from safetensors.torch import load_file

    from xincept.common.head import head_for_state

    meta = read_meta(path)
    cfg_d = dict(meta["head"]["config"])
    cfg_d["fusion_widths"] = tuple(cfg_d["fusion_widths"])
    head = head_for_state(meta["head"]["in_dims"], meta["num_classes"], HeadConfig(**cfg_d),
                          load_file(str(Path(path) / "head.safetensors")))
    booster = None
    if meta["classifier"]["kind"] == "xgboost":
        booster = xgb.Booster()
        booster.load_model(str(Path(path) / "xgb.json"))
        best = meta["classifier"].get("best_iteration")
        if best is not None:
            booster.set_attr(best_iteration=str(best))
    margin = meta["classifier"].get("base_margin", "none")  # bundles before base margins boosted from a constant
    if margin not in ("head-logits", "none"):
        raise BundleError(f"{Path(path) / 'model.json'}: classifier base_margin {margin!r} is not one this version reads "
                          "(head-logits or none): use a matching xincept version")
    model = XinceptModel(head=head, booster=booster, classes=meta["classes"], xgb_features=meta["classifier"]["features"],
                         xgb_margin="head" if margin == "head-logits" else "none")
    return model, meta
