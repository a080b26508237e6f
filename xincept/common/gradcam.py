"""Grad-CAM through both frozen backbones into the fused prediction, drawn at the site (never sent).

For each backbone the spatial feature map A (N, C, h, w) before global pooling is taken from timm's
``forward_features``; pooling (``forward_head(pre_logits=True)``) and the fused head follow, so the
class score depends on every backbone's map. The gradient of the class logit with respect to each
map gives channel weights (their spatial mean); ReLU(sum_c w_c A_c) is that backbone's heatmap. Each
heatmap is placed where its backbone saw the image (timm's eval transform: shorter side resized to
size / crop_pct, centre crop) and the fused heatmap is their mean. XGBoost is not differentiable, so
the explained score is the fused head's logit for the class the bundle's classifier predicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xincept.common.backbones import Backbone
from xincept.common.model import XinceptModel


@dataclass
class Explanation:
    image: np.ndarray  # (H, W, 3) uint8, the original image
    heatmaps: dict[str, np.ndarray]  # backbone name -> (H, W) in [0, 1]
    fused: np.ndarray  # (H, W) in [0, 1]
    target: int
    proba: np.ndarray
    no_evidence: list[str]  # backbones whose map has no region that raises the class score (ReLU of the CAM is all zero)


def _place(cam: torch.Tensor, backbone: Backbone, height: int, width: int) -> np.ndarray:
    """Map a (h, w) CAM over the backbone's centre crop back onto the (height, width) image."""
    crop_pct = float(backbone.data_config.get("crop_pct", 1.0))
    side = min(height, width) * crop_pct
    ch, cw = (side, side) if backbone.data_config.get("crop_mode", "center") == "center" else (height, width)
    ch, cw = max(1, int(round(ch))), max(1, int(round(cw)))
    up = F.interpolate(cam[None, None], size=(ch, cw), mode="bilinear", align_corners=False)[0, 0].numpy()
    out = np.zeros((height, width), dtype=np.float32)
    top, left = (height - ch) // 2, (width - cw) // 2
    out[top : top + ch, left : left + cw] = up
    return out


def _normalise(cam: np.ndarray) -> np.ndarray:
    lo, hi = float(cam.min()), float(cam.max())
    return (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)


def explain_image(model: XinceptModel, backbones: list[Backbone], path: Path, target: int | None = None) -> Explanation:
    """Grad-CAM heatmaps of one image for ``target`` (default: the bundle's predicted class)."""
    from PIL import Image

    rgb = Image.open(path).convert("RGB")
    width, height = rgb.size
    maps, pooled = [], []
    for b in backbones:
        b.model.eval()
        x = b.transform(rgb).unsqueeze(0).float()
        with torch.no_grad():
            fmap = b.model.forward_features(x)
        fmap = fmap.detach().requires_grad_(True)  # (1, C, h, w): the leaf the gradient is taken at
        maps.append(fmap)
        pooled.append(b.model.forward_head(fmap, pre_logits=True))  # (1, C)
    head = model.head
    head.eval()
    feats = [p.detach().numpy() for p in pooled]
    proba = model.predict_proba(feats)[0]
    target = int(proba.argmax()) if target is None else int(target)
    logits = head(pooled)
    logits[0, target].backward()
    heatmaps, no_evidence = {}, []
    for b, fmap in zip(backbones, maps):
        weights = fmap.grad.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
        cam = torch.relu((weights * fmap.detach()).sum(1))[0]  # (h, w)
        if float(cam.max()) <= 0:
            no_evidence.append(b.name)
        heatmaps[b.name] = _normalise(_place(cam, b, height, width))
    fused = _normalise(np.mean(list(heatmaps.values()), axis=0))
    return Explanation(np.asarray(rgb), heatmaps, fused, target, proba, no_evidence)


def overlay_png(exp: Explanation, classes: list[str], title: str) -> bytes:
    """Original | each backbone's heatmap | fused overlay, as one PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("image", None)] + [(name, cam) for name, cam in exp.heatmaps.items()] + [("fused Grad-CAM", exp.fused)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=110)
    for ax, (name, cam) in zip(axes, panels):
        ax.imshow(exp.image)
        if cam is not None:
            ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(name + ("\n(no region raises this class)" if name in exp.no_evidence else ""), fontsize=9)
        ax.axis("off")
    probs = ", ".join(f"{c} {p:.2f}" for c, p in zip(classes, exp.proba))
    fig.suptitle(f"{title}: explained class {classes[exp.target]} ({probs})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
