"""`xincept-client explain`: Grad-CAM overlays of images with a model bundle, written at the site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xincept.common.cli import CacheDirOpt, DeviceOpt, WeightsDirOpt, friendly_errors, setup_logging


@friendly_errors
def explain(
    images: Annotated[list[Path], typer.Argument(help="Image files to explain.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle folder (OUT/model of a training run).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNG overlays and explanations.json (stays at this site).")],
    target: Annotated[str | None, typer.Option("--class", help="Explain this class instead of the predicted one.")] = None,
    weights_dir: WeightsDirOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Write Grad-CAM heatmaps (each backbone and fused) over each image; nothing leaves this machine."""
    setup_logging()
    from xincept.client.explain import explain_images

    for row in explain_images(model, images, out, weights_dir, target, cache_dir):
        if "error" in row:
            typer.echo(f"{row['image']}: ERROR {row['error']}")
        else:
            typer.echo(f"{row['image']}: {row['class']} -> {row['overlay']}")
    typer.echo(f"wrote {out / 'explanations.json'}")
