"""`xincept-client stage-weights`: download ImageNet weights on a connected machine for offline sites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xincept.common.cli import BackbonesOpt, friendly_errors, setup_logging, split_names
from xincept.common.config import THESIS_BACKBONES


@friendly_errors
def stage_weights(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write <name>.safetensors and SHA256SUMS.txt into.")],
    backbones: BackbonesOpt = ",".join(THESIS_BACKBONES),
) -> None:
    """Save timm's ImageNet weights with checksums; copy the folder to each site and pass --weights-dir."""
    setup_logging()
    from xincept.common.backbones import stage_weights as stage
    from xincept.common.errors import WeightsError

    try:
        sums = stage(tuple(split_names(backbones) or THESIS_BACKBONES), out)
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"could not download weights ({type(exc).__name__}: {exc}); run this on a machine with internet access") from exc
    for name, digest in sums.items():
        typer.echo(f"{digest}  {out / name}")
