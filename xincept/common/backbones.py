"""Frozen ImageNet backbones (timm), their preprocessing and a weights fingerprint.

Weights come from, in order: a staged local folder (``--weights-dir`` or ``XINCEPT_WEIGHTS_DIR``),
timm's pretrained download when online, or random initialisation only when asked for
explicitly (``pretrained=False``), which is logged as a warning and recorded in every output.
Random initialisation is seeded by the backbone name, so every site builds the same network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from xincept.common.config import BackboneConfig
from xincept.common.errors import WeightsError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

WEIGHTS_ENV = "XINCEPT_WEIGHTS_DIR"


@dataclass
class Backbone:
    """A frozen feature extractor: ``model(x)`` gives pooled features of width ``num_features``."""

    name: str
    model: "torch.nn.Module"
    num_features: int
    fingerprint: str
    weights: str  # "imagenet (keras)", "imagenet (timm)", "local:<file>" (an unlabelled staged file) or "random"
    data_config: dict[str, Any]
    transform: Callable | None  # None (and no model) for a backbone known from its descriptor (remembered_backbones)
    param_bytes: int = 0
    source: dict[str, str] | None = None  # a staged file's origin: {"file", "sha256" of the file it was converted from}

    @property
    def preprocess_key(self) -> str:
        """Hash of everything that changes the features of an image."""
        blob = json.dumps({"name": self.name, "fp": self.fingerprint, "cfg": self.data_config}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.fingerprint[:16]}-{self.preprocess_key}"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "weights": self.weights,
            **({"weights_source": self.source} if self.source else {}),
            "num_features": self.num_features,
            "preprocessing": self.data_config,
        }


def weights_dir_from(cfg: BackboneConfig) -> Path | None:
    if cfg.weights_dir is not None:
        return Path(cfg.weights_dir)
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else None


def staged_weights_file(weights_dir: Path, name: str) -> Path:
    """The file a staged backbone is expected in: ``<weights_dir>/<name>.safetensors``."""
    return weights_dir / f"{name}.safetensors"


def staging_hint(name: str, weights_dir: Path | None) -> str:
    target = weights_dir or Path("WEIGHTS_DIR")
    return (
        f"stage it on a connected machine with `xincept-client stage-weights --out {target}` "
        f"(writes {staged_weights_file(target, name)}), copy the folder to this machine and pass "
        f"--weights-dir {target} (or set {WEIGHTS_ENV}); for Xception, `xincept-client stage-weights --from-keras FILE --out "
        f"{target}` converts Keras' ImageNet weights offline; "
        + ("without ImageNet InceptionV3 weights, run Xception alone (--backbones legacy_xception; the README says why) or "
           if name == "inception_v3" else "")
        + f"to keep only {name} random while the others load their weights, pass --random-backbones {name}; or run with "
        "--no-pretrained for random weights (not for clinical use)"
    )


def fingerprint_state_dict(state: dict[str, "torch.Tensor"]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of a state dict, in sorted key order."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def random_warning(names: list[str] | tuple[str, ...]) -> str:
    """The warning every output carries when ``names`` (some or all backbones) have random weights."""
    return f"RANDOM WEIGHTS ({', '.join(names)}): not ImageNet-trained; results are not clinical evidence"


def _create(name: str, cfg: BackboneConfig) -> tuple["torch.nn.Module", str, dict[str, str] | None]:
    import timm
    import torch

    if cfg.is_random(name):
        log.debug("%s", random_warning([name]))  # the command warns once (xincept.common.cli.warn_random_weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_name_seed(name))
            return timm.create_model(name, pretrained=False, num_classes=0), "random", None

    weights_dir = weights_dir_from(cfg)
    if weights_dir is not None:
        path = staged_weights_file(weights_dir, name)
        if not path.is_file():
            raise WeightsError(f"backbone {name}: expected staged weights at {path}, which does not exist; {staging_hint(name, weights_dir)}")
        model = timm.create_model(name, pretrained=False, num_classes=0)
        try:
            from safetensors.torch import load_file

            state = load_file(str(path))
            state = {k: v for k, v in state.items() if not k.startswith(_classifier_prefixes(model))}
            model.load_state_dict(state, strict=True)
        except Exception as exc:
            raise WeightsError(f"backbone {name}: weights file {path} could not be loaded ({exc}); re-stage it with `xincept-client stage-weights`") from exc
        from xincept.common.weights_staging import source_of

        origin = source_of(path)
        if origin is None:  # staged before files were labelled
            return model, f"local:{path}", None
        source = {"file": path.name, **({"converted_from": origin["source_file"], "source_sha256": origin["source_sha256"]}
                                         if "source_sha256" in origin else {})}
        return model, origin["weights"], source

    try:
        return timm.create_model(name, pretrained=True, num_classes=0), "imagenet (timm)", None
    except Exception as exc:  # network, hub or cache errors
        raise WeightsError(
            f"backbone {name}: could not download ImageNet weights ({type(exc).__name__}: {exc}). "
            f"Offline? {staging_hint(name, None)}"
        ) from exc


def _classifier_prefixes(model: "torch.nn.Module") -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier", "fc")
    names = names if isinstance(names, (list, tuple)) else [names]
    return tuple(f"{n}." for n in names)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_backbone(name: str, cfg: BackboneConfig) -> Backbone:
    """Build one frozen backbone with its eval preprocessing at ``cfg.input_size``."""
    import timm
    from timm.data import create_transform, resolve_model_data_config

    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise WeightsError(f"unknown backbone {name!r}: use a timm model name such as 'legacy_xception' or 'inception_v3'")
    model, weights, source = _create(name, cfg)
    model.eval().requires_grad_(False)
    data_config = dict(resolve_model_data_config(model))
    data_config["input_size"] = (3, cfg.input_size, cfg.input_size)
    transform = create_transform(**data_config, is_training=False)
    data_config = {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}
    fingerprint = fingerprint_state_dict(model.state_dict())
    return Backbone(
        name=name,
        model=model,
        num_features=int(model.num_features),
        fingerprint=fingerprint,
        weights=weights,
        data_config=data_config,
        transform=transform,
        param_bytes=int(sum(p.numel() * p.element_size() for p in model.parameters())),
        source=source,
    )


def load_backbones(cfg: BackboneConfig) -> list[Backbone]:
    return [load_backbone(name, cfg) for name in cfg.names]


# A backbone's descriptor (fingerprint, preprocessing, width), kept in the embedding cache so that a process whose
# images are all cached (a site's long-lived runner, a simulated site, a rerun) never builds the networks: building
# the thesis pair and importing timm cost about 370 MB per process and seconds of start-up (bench/fed_vs_central.py).
DESCRIPTORS = "backbones"


def _source_key(name: str, cfg: BackboneConfig) -> str | None:
    """Everything the weights and preprocessing of ``name`` depend on, as a key (None: only building tells).

    Random weights: the name (their seed), input size and the timm and torch releases; staged weights: the file's
    sha256. timm's own downloads are not keyed (their files live in the hub's cache): those backbones are built.
    """
    from importlib.metadata import version

    if cfg.is_random(name):
        source = f"random|{version('timm')}|{version('torch')}"
    else:
        weights_dir = weights_dir_from(cfg)
        path = staged_weights_file(weights_dir, name) if weights_dir is not None else None
        if path is None or not path.is_file():
            return None
        from xincept.common.weights_staging import file_sha256

        source = f"file|{file_sha256(path)}"
    return hashlib.sha256(f"{name}|{cfg.input_size}|{source}".encode()).hexdigest()[:24]


def remember_backbones(backbones: list[Backbone], cfg: BackboneConfig, cache_root: Path) -> None:
    """Write each built backbone's descriptor under ``cache_root/backbones`` (atomic; best effort)."""
    from xincept.common.atomic import write_json_atomic

    for b in backbones:
        key = _source_key(b.name, cfg)
        if key is None:
            continue
        try:
            write_json_atomic(Path(cache_root) / DESCRIPTORS / f"{b.name}-{key}.json",
                              {**b.describe(), "param_bytes": b.param_bytes})
        except OSError as exc:  # a read-only cache still embeds; it only rebuilds the networks next time
            log.debug("could not record the descriptor of %s: %s", b.name, exc)


def remembered_backbones(cfg: BackboneConfig, cache_root: Path) -> list[Backbone] | None:
    """The backbones of ``cfg`` without their networks, from descriptors written by :func:`remember_backbones`
    for the same weights; None where one is missing or unreadable (then build them)."""
    out = []
    for name in cfg.names:
        key = _source_key(name, cfg)
        path = Path(cache_root) / DESCRIPTORS / f"{name}-{key}.json"
        if key is None or not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            b = Backbone(name=name, model=None, num_features=int(d["num_features"]), fingerprint=str(d["fingerprint"]),  # type: ignore[arg-type]
                         weights=str(d["weights"]), data_config=dict(d["preprocessing"]), transform=None,
                         param_bytes=int(d.get("param_bytes", 0)), source=d.get("weights_source"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if d.get("name") != name:
            return None
        if b.weights == "random":
            log.debug("%s", random_warning([name]))  # the command warns once (xincept.common.cli.warn_random_weights)
        out.append(b)
    return out
