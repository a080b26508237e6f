"""Staged backbone weights: written once (from timm on a connected machine, or from a Keras file offline), checked
at each site.

A staged folder holds ``<name>.safetensors`` per backbone, ``SHA256SUMS.txt`` over them, and for a converted file
``<name>.source.json``: the source file's name and sha256, the layout it was read in, the conversion rules and the
fingerprint of the resulting network. The safetensors header carries the same ``weights`` label and source sha256, so
a site that copied only the ``.safetensors`` file still records where its weights came from.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from xincept.common.atomic import write_json_atomic, write_text_atomic, write_with_atomic
from xincept.common.backbones import fingerprint_state_dict, staged_weights_file
from xincept.common.errors import WeightsError

log = logging.getLogger(__name__)

SUMS = "SHA256SUMS.txt"
KERAS_LABEL = "imagenet (keras)"
TIMM_LABEL = "imagenet (timm)"
KERAS_TARGET = "legacy_xception"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_record_file(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}.source.json"


def read_sums(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` from ``folder/SHA256SUMS.txt`` (empty when absent)."""
    path = Path(folder) / SUMS
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.strip()] = digest
    return out


def _write_sums(folder: Path, new: dict[str, str]) -> None:
    sums = {**read_sums(folder), **new}  # staging one backbone keeps the others' lines
    write_text_atomic(Path(folder) / SUMS, "".join(f"{h}  {n}\n" for n, h in sorted(sums.items())))


def _save(state: dict, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    write_with_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def stage_from_timm(names: tuple[str, ...], out: Path) -> dict[str, str]:
    """Download timm's ImageNet weights (on a connected machine) into ``out`` with checksums."""
    import timm

    out.mkdir(parents=True, exist_ok=True)
    sums: dict[str, str] = {}
    for name in names:
        model = timm.create_model(name, pretrained=True, num_classes=0)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        path = staged_weights_file(out, name)
        _save(state, path, {"weights": TIMM_LABEL, "backbone": name})
        sums[path.name] = file_sha256(path)
    _write_sums(out, sums)
    return sums


def convert_keras_xception(source: Path) -> tuple[dict, dict[str, Any]]:
    """Read ImageNet Xception from a Keras file into timm ``legacy_xception``'s state dict; nothing is written.

    Returns the state dict (torch tensors, loaded strictly into timm's model) and the conversion record.
    """
    import timm
    import torch

    from xincept.common.keras_xception import KERAS_BN_EPS, TORCH_BN_EPS, map_to_timm, read_keras_file

    kf = read_keras_file(Path(source))
    with torch.random.fork_rng(devices=[]):
        model = timm.create_model(KERAS_TARGET, pretrained=False, num_classes=0)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        mapped = map_to_timm(kf, shapes)
    except WeightsError as exc:
        raise WeightsError(f"{source}: {exc}; nothing was written") from None
    state = {k: torch.from_numpy(v) for k, v in mapped.items()}
    for key in shapes:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # map_to_timm checked names and shapes; this is a last guard
        raise WeightsError(f"{source}: converted weights do not load into timm's {KERAS_TARGET} ({exc})") from exc
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    variables = sum(len(layer.vars) for layer in kf.layers)
    record = {
        "backbone": KERAS_TARGET,
        "weights": KERAS_LABEL,
        "source": {"file": Path(source).name, "sha256": file_sha256(Path(source)), "layout": kf.layout,
                   "keras_version": kf.keras_version},
        "conversion": {
            "variables_mapped": variables,
            "layers_mapped": len(kf.layers),
            "ignored_outside_xception": [layer.path for layer in kf.other],
            "rules": ["Conv2D kernel (kh,kw,in,out) -> (out,in,kh,kw)",
                      "SeparableConv2D depthwise (kh,kw,in,1) -> (in,1,kh,kw), pointwise (1,1,in,out) -> (out,in,1,1)",
                      f"BatchNormalization running_var = moving_variance + {KERAS_BN_EPS:g} - {TORCH_BN_EPS:g} "
                      "(Keras epsilon 1e-3, timm 1e-5: the same normalisation)"],
            "timm": timm.__version__,
        },
        "fingerprint": fingerprint_state_dict(state),
    }
    return state, record


def stage_from_keras(source: Path, out: Path) -> dict[str, Any]:
    """Convert Keras' ImageNet Xception in ``source`` into ``out/legacy_xception.safetensors`` with its record.

    Every check runs before anything is written: a refused file leaves ``out`` as it was.
    """
    state, record = convert_keras_xception(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = staged_weights_file(out, KERAS_TARGET)
    _save(state, path, {"weights": KERAS_LABEL, "backbone": KERAS_TARGET, "source_sha256": record["source"]["sha256"],
                        "source_file": record["source"]["file"], "fingerprint": record["fingerprint"]})
    record["staged"] = {"file": path.name, "sha256": file_sha256(path)}
    write_json_atomic(source_record_file(out, KERAS_TARGET), record)
    _write_sums(out, {path.name: record["staged"]["sha256"]})
    log.info("staged %s from %s (%s, %d variables)", path, source, record["source"]["layout"],
             record["conversion"]["variables_mapped"])
    return record


def staged_metadata(path: Path) -> dict[str, str]:
    """The ``weights`` label and source written into a staged safetensors header (empty for older files)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable files are reported by the loader
        return {}


def verify_staged_weights(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Check a staged weights folder against its SHA256SUMS.txt, and a converted file against its record.

    Returns {file: sha256} or raises WeightsError naming every problem.
    """
    folder = Path(folder)
    if not (folder / SUMS).is_file():
        raise WeightsError(f"{folder / SUMS} is missing: stage the weights with `xincept-client stage-weights --out {folder}`")
    listed = read_sums(folder)
    problems, found = [], {}
    for name in names:
        path = staged_weights_file(folder, name)
        if not path.is_file():
            problems.append(f"{path.name} is missing")
            continue
        digest = file_sha256(path)
        if listed.get(path.name) != digest:
            problems.append(f"{path.name} does not match {SUMS} (damaged or replaced; copy the staged folder again)")
            continue
        found[path.name] = digest
        record_path = source_record_file(folder, name)
        if record_path.is_file():
            problems += _verify_record(path, record_path, digest)
    if problems:
        raise WeightsError(f"weights in {folder}: " + "; ".join(problems))
    return found


def _verify_record(path: Path, record_path: Path, digest: str) -> list[str]:
    """A converted file: its record names this file, its header names the same source, and it holds that network."""
    from safetensors.torch import load_file

    try:
        record = json.loads(record_path.read_text())
        want_source, want_fp = record["source"]["sha256"], record["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{record_path.name} is unreadable ({exc}); stage again with `xincept-client stage-weights --from-keras`"]
    problems = []
    if record.get("staged", {}).get("sha256") != digest:
        problems.append(f"{record_path.name} describes another {path.name} (stage again)")
    if staged_metadata(path).get("source_sha256") != want_source:
        problems.append(f"{path.name}'s header names another source than {record_path.name}")
    if fingerprint_state_dict(load_file(str(path))) != want_fp:
        problems.append(f"{path.name} does not hold the network {record_path.name} records (fingerprint differs)")
    return problems


def source_of(path: Path) -> dict[str, str] | None:
    """Where a staged file's weights came from: ``{"weights", "source_sha256", "source_file"}`` or None if unlabelled."""
    meta = staged_metadata(path)
    if not meta.get("weights"):
        return None
    return {k: meta[k] for k in ("weights", "source_sha256", "source_file") if k in meta}
