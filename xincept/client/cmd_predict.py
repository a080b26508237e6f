"""`xincept-client predict`: class and probabilities per image with a model bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xincept.common.cli import CacheDirOpt, DeviceOpt, FormatOpt, WeightsDirOpt, check_format, friendly_errors, setup_logging, stdout_json


@friendly_errors
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files to classify.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle folder (OUT/model of a training run).")],
    weights_dir: WeightsDirOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    fmt: FormatOpt = "text",
) -> None:
    """Predict the class of each image; a bundle whose backbones differ from the local weights is refused."""
    check_format(fmt)
    setup_logging()
    from xincept.client.predict import predict_images
    from xincept.common.config import default_cache_dir

    results = predict_images(model, images, cache_dir or default_cache_dir(), weights_dir, device)
    if fmt == "json":
        stdout_json(results)
    else:
        for r in results:
            if "error" in r:
                typer.echo(f"{r['image']}: ERROR {r['error']}")
            else:
                probs = ", ".join(f"{c} {p:.3f}" for c, p in r["probabilities"].items())
                typer.echo(f"{r['image']}: {r['class']} ({probs})")
        if results and results[0].get("warning"):
            typer.echo(f"warning: {results[0]['warning']}", err=True)
    if any("error" in r for r in results):
        raise typer.Exit(1)
