"""`xincept-client stage-weights`: stage ImageNet weights for offline sites (from timm online, or from a Keras file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xincept.common.cli import BackbonesOpt, VerboseOpt, friendly_errors, setup_logging, split_names
from xincept.common.config import THESIS_BACKBONES

FromKerasOpt = Annotated[Path | None, typer.Option(
    "--from-keras", help="Convert Keras' ImageNet Xception from this file, offline: a Keras 3 .keras zip, a .weights.h5 "
    "(the Xception alone or nested in a larger model) or Keras 2's xception_weights_tf_dim_ordering_tf_kernels_notop.h5. "
    "Writes legacy_xception.safetensors and legacy_xception.source.json. Xception only: no InceptionV3 import, for want of a "
    "real Keras InceptionV3 file to test it against (give it --random-backbones inception_v3 or stage it from timm).")]


@friendly_errors
def stage_weights(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write <name>.safetensors and SHA256SUMS.txt into.")],
    from_keras: FromKerasOpt = None,
    backbones: BackbonesOpt = ",".join(THESIS_BACKBONES),
    verbose: VerboseOpt = False,
) -> None:
    """Stage ImageNet weights with checksums; copy the folder to each site and pass --weights-dir.

    Without --from-keras, downloads timm's weights (a machine with internet access).
    """
    setup_logging(verbose)
    from xincept.common.errors import WeightsError
    from xincept.common.weights_staging import stage_from_keras, stage_from_timm

    if from_keras is not None:
        record = stage_from_keras(from_keras, out)
        conv = record["conversion"]
        typer.echo(f"{record['staged']['sha256']}  {out / record['staged']['file']}\n"
                   f"weights: {record['weights']}, from {record['source']['file']} (sha256 {record['source']['sha256']}, "
                   f"{record['source']['layout']}); {conv['variables_mapped']} variables in {conv['layers_mapped']} layers mapped"
                   + (f"; ignored outside the Xception: {', '.join(conv['ignored_outside_xception'])}"
                      if conv["ignored_outside_xception"] else "")
                   + f"\nrecord: {out / 'legacy_xception.source.json'}; check it at the site with "
                   f"`xincept-client verify-weights --weights-dir {out} --backbones legacy_xception`")
        return
    try:
        sums = stage_from_timm(tuple(split_names(backbones) or THESIS_BACKBONES), out)
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"could not download weights ({type(exc).__name__}: {exc}); run this on a machine with internet "
                           "access, or convert a Keras Xception file offline with --from-keras FILE") from exc
    for name, digest in sums.items():
        typer.echo(f"{digest}  {out / name}")
