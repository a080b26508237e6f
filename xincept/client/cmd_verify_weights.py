"""`xincept-client verify-weights`: check a staged weights folder at the site (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xincept.common.cli import BackbonesOpt, friendly_errors, setup_logging, split_names
from xincept.common.config import THESIS_BACKBONES


@friendly_errors
def verify_weights(
    weights_dir: Annotated[Path, typer.Option("--weights-dir", help="Folder made by `xincept-client stage-weights`.")],
    backbones: BackbonesOpt = ",".join(THESIS_BACKBONES),
) -> None:
    """Verify every backbone's weights file against SHA256SUMS.txt, and a converted one against its record (source
    sha256 and network fingerprint); exit 2 with the reason when one differs."""
    setup_logging()
    from xincept.common.weights_staging import source_of, verify_staged_weights

    for name, digest in verify_staged_weights(weights_dir, tuple(split_names(backbones) or THESIS_BACKBONES)).items():
        origin = source_of(weights_dir / name) or {}
        label = origin.get("weights", "unlabelled (staged before labels)")
        src = f", from {origin['source_file']} sha256 {origin['source_sha256']}" if "source_sha256" in origin else ""
        typer.echo(f"OK {digest}  {weights_dir / name} [{label}{src}]")
