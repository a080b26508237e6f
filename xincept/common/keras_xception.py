"""Keras' ImageNet Xception, read from a Keras weights file, as a state dict of timm's ``legacy_xception``.

timm's ``legacy_xception`` is a port of these same Keras weights (same blocks, same widths), so the conversion is a
renaming plus layout changes; nothing is trained or approximated. Three Keras layouts are read:

- Keras 3 (``.keras`` zip with ``model.weights.h5`` inside, or a ``.weights.h5``): variables sit under
  ``.../layers/<auto name>/vars/<i>``, where the auto name is the layer class in snake case with a per-class counter
  in the order of the model's layer list (``conv2d``, ``conv2d_1``, ``separable_conv2d_7``, ...). The Xception may be
  the whole model or nested in a larger one (a classifier built on ``keras.applications.Xception``).
- Keras 2 (``xception_weights_tf_dim_ordering_tf_kernels_notop.h5`` and ``model.save_weights('x.h5')``): one group
  per layer, listed in the ``layer_names`` attribute, each with ``weight_names`` such as ``block1_conv1/kernel:0``.

Every Xception variable is mapped exactly once: a missing, left-over or misshapen variable is refused by name.
Layouts: Conv2D kernel (kh, kw, in, out) -> (out, in, kh, kw); SeparableConv2D depthwise (kh, kw, in, 1) ->
(in, 1, kh, kw) and pointwise (1, 1, in, out) -> (out, in, 1, 1); BatchNormalization gamma, beta, moving mean and
moving variance -> weight, bias, running_mean, running_var. Keras normalises with epsilon 1e-3 and timm's
BatchNorm2d with 1e-5, so ``running_var`` is stored as ``moving_variance + 1e-3 - 1e-5``: the same
``(x - mean) / sqrt(var + eps)`` as Keras, exactly.

What the port cannot make identical: Keras pools with TensorFlow's asymmetric "same" padding and timm with a
symmetric padding of 1; on even feature maps (150 px and 224 px inputs) a max-pool window starts one pixel apart.
The features are then those of timm's port of these weights (the model timm's own ImageNet numbers are for).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xincept.common.errors import WeightsError

KERAS_BN_EPS = 1e-3
TORCH_BN_EPS = 1e-5
BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")
KIND_VARS = {"conv": ("kernel",), "sep": ("depthwise_kernel", "pointwise_kernel"), "bn": BN_VARS}
KIND_CLASS = {"conv": "Conv2D", "sep": "SeparableConv2D", "bn": "BatchNormalization"}
RESIDUAL_BLOCKS = (2, 3, 4, 13)  # Keras blocks with a strided 1x1 residual convolution (unnamed in Keras)


@dataclass(frozen=True)
class XceptionLayer:
    """One weighted layer of Keras' Xception, in Keras' layer-list order, and the timm module it becomes."""

    name: str  # Keras' layer name; residual layers have no fixed Keras name, we call them block<N>_residual[_bn]
    kind: str  # conv | sep | bn
    target: str  # timm legacy_xception module path

    @property
    def named_in_keras(self) -> bool:
        return "_residual" not in self.name


def xception_layers() -> list[XceptionLayer]:
    """Keras' Xception's 40 BatchNormalization, 34 SeparableConv2D and 6 Conv2D layers in its layer-list order."""
    out = [XceptionLayer("block1_conv1", "conv", "conv1"), XceptionLayer("block1_conv1_bn", "bn", "bn1"),
           XceptionLayer("block1_conv2", "conv", "conv2"), XceptionLayer("block1_conv2_bn", "bn", "bn2")]
    for kb in range(2, 14):  # Keras block kb is timm's block kb - 1
        tb, reps = kb - 1, 2 if kb in RESIDUAL_BLOCKS else 3
        offset = 0 if kb == 2 else 1  # timm drops the leading ReLU of its first block
        for i in range(reps):
            out.append(XceptionLayer(f"block{kb}_sepconv{i + 1}", "sep", f"block{tb}.rep.{3 * i + offset}"))
            out.append(XceptionLayer(f"block{kb}_sepconv{i + 1}_bn", "bn", f"block{tb}.rep.{3 * i + offset + 1}"))
        if kb in RESIDUAL_BLOCKS:
            out.append(XceptionLayer(f"block{kb}_residual", "conv", f"block{tb}.skip"))
            out.append(XceptionLayer(f"block{kb}_residual_bn", "bn", f"block{tb}.skipbn"))
    out += [XceptionLayer("block14_sepconv1", "sep", "conv3"), XceptionLayer("block14_sepconv1_bn", "bn", "bn3"),
            XceptionLayer("block14_sepconv2", "sep", "conv4"), XceptionLayer("block14_sepconv2_bn", "bn", "bn4")]
    return out


@dataclass
class FileLayer:
    """A weighted layer as found in the file: where it is, its variables by Keras name, and its kind."""

    path: str
    name: str
    vars: dict[str, np.ndarray]
    kind: str | None  # None: not a layer an Xception has (a Dense of a classifier built on it)


@dataclass
class KerasFile:
    layout: str
    layers: list[FileLayer]
    other: list[FileLayer] = field(default_factory=list)  # weighted layers outside the Xception (kept for callers)
    keras_version: str | None = None


def _kind_of(vars_: dict[str, np.ndarray]) -> str | None:
    names = set(vars_)
    if "depthwise_kernel" in names:
        return "sep"
    if "gamma" in names or "moving_mean" in names:
        return "bn"
    if "kernel" in names and vars_["kernel"].ndim == 4:
        return "conv"
    return None


# ---- Keras 3 ------------------------------------------------------------------------------------------------------

_AUTO = re.compile(r"^(conv2d|separable_conv2d|batch_normalization)(?:_(\d+))?$")
_AUTO_KIND = {"conv2d": "conv", "separable_conv2d": "sep", "batch_normalization": "bn"}
_AUTO_VARS = {"conv": ("kernel", "bias"), "sep": ("depthwise_kernel", "pointwise_kernel", "bias"),
              "bn": BN_VARS}


def _keras3_layers_group(h5) -> tuple[Any, list[Any]]:
    """The ``layers`` group that holds the Xception's layers, and every weighted group outside it."""
    import h5py

    candidates: list[tuple[int, str]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and name.split("/")[-1] == "layers":
            n = sum(1 for child in obj if child.startswith("separable_conv2d"))
            if n:
                candidates.append((n, name))

    h5.visititems(visit)
    if not candidates:
        raise WeightsError("no SeparableConv2D layers under any 'layers' group: not a Keras Xception (or a model built on one)")
    candidates.sort(key=lambda c: (abs(c[0] - 34), c[1]))  # Xception has 34; a second nested model is not it
    return h5[candidates[0][1]], [c[1] for c in candidates[1:]]


def _read_vars(group: Any, kind: str | None) -> dict[str, np.ndarray]:
    if "vars" not in group:
        return {}
    raw = {int(k): np.asarray(group["vars"][k], dtype=np.float32) for k in group["vars"] if k.isdigit()}
    names = _AUTO_VARS.get(kind or "", ())
    out = {}
    for i in sorted(raw):
        key = names[i] if i < len(names) else f"var{i}"
        out[key] = raw[i]
    return out


def _read_keras3(h5, layout: str) -> KerasFile:
    group, _ = _keras3_layers_group(h5)
    base = group.name.lstrip("/")
    layers, other = [], []
    order = {"conv": [], "sep": [], "bn": []}
    for child in group:
        m = _AUTO.match(child)
        sub = group[child]
        if m is None:
            if "vars" in sub and len(sub["vars"]):
                other.append(FileLayer(f"{base}/{child}", child, {}, None))
            continue
        kind = _AUTO_KIND[m.group(1)]
        order[kind].append((int(m.group(2) or 0), child))
    for kind, found in order.items():
        for _, child in sorted(found):
            layers.append(FileLayer(f"{base}/{child}", child, _read_vars(group[child], kind), kind))
    # outside the Xception group: a classifier's own layers (never part of the conversion)
    root_layers = h5.get("layers")
    if root_layers is not None and root_layers.name != group.name:
        for child in root_layers:
            sub = root_layers[child]
            if "vars" in sub and len(sub["vars"]):
                other.append(FileLayer(f"layers/{child}", child, {str(k): np.asarray(sub["vars"][k]) for k in sub["vars"]}, None))
    return KerasFile(layout=layout, layers=layers, other=other)


# ---- Keras 2 ------------------------------------------------------------------------------------------------------

def _attr_names(obj: Any, key: str) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in obj.attrs.get(key, [])]


def _read_keras2(h5) -> KerasFile:
    root = h5["model_weights"] if "model_weights" in h5 else h5
    grouped: dict[str, FileLayer] = {}
    for layer_name in _attr_names(root, "layer_names"):
        g = root[layer_name]
        for wn in _attr_names(g, "weight_names"):
            parts = wn.split("/")
            owner = parts[-2] if len(parts) >= 2 else layer_name
            var = parts[-1].split(":")[0]
            layer = grouped.setdefault(owner, FileLayer(f"{layer_name}/{'/'.join(parts[:-1]) or layer_name}", owner, {}, None))
            if var in layer.vars:
                raise WeightsError(f"variable {layer_name}/{wn} appears twice in the file: not a Keras weights file we can map")
            layer.vars[var] = np.asarray(g[wn], dtype=np.float32)
    if not grouped:
        raise WeightsError("no layer_names/weight_names in the HDF5 file: not a Keras 2 weights file (or an empty one)")
    layers, other = [], []
    for layer in grouped.values():
        layer.kind = _kind_of(layer.vars)
        (layers if layer.kind else other).append(layer)
    version = root.attrs.get("keras_version") or h5.attrs.get("keras_version")
    return KerasFile(layout="keras2-h5", layers=layers, other=other,
                     keras_version=version.decode() if isinstance(version, bytes) else version)


# ---- reading ------------------------------------------------------------------------------------------------------

def _check_config(config: dict) -> None:
    """In a ``.keras`` file, the Xception's layer list (names and classes) must be Keras' Xception's."""
    def find(cfg: dict) -> dict | None:
        for layer in cfg.get("config", {}).get("layers", []):
            if layer.get("class_name") in ("Functional", "Model") and any(
                    sub.get("config", {}).get("name") == "block1_conv1" for sub in layer.get("config", {}).get("layers", [])):
                return layer
            hit = find(layer)
            if hit:
                return hit
        return cfg if any(sub.get("config", {}).get("name") == "block1_conv1" for sub in cfg.get("config", {}).get("layers", [])) else None

    model = find(config)
    if model is None:
        raise WeightsError("config.json has no model with Keras' Xception layers (block1_conv1, ...): not a Keras Xception")
    weighted = [(s["class_name"], s["config"]["name"]) for s in model["config"]["layers"]
                if s.get("class_name") in KIND_CLASS.values()]
    want = [(KIND_CLASS[w.kind], w.name) for w in xception_layers()]
    for kind_class in KIND_CLASS.values():
        have_k = [n for c, n in weighted if c == kind_class]
        want_k = [n for c, n in want if c == kind_class]
        if len(have_k) != len(want_k):
            raise WeightsError(f"config.json: the Xception has {len(have_k)} {kind_class} layers where Keras' Xception has {len(want_k)}")
        for have, want_name in zip(have_k, want_k):
            if "_residual" not in want_name and have != want_name:
                raise WeightsError(f"config.json: {kind_class} layer {have!r} stands where Keras' Xception has {want_name!r}")


def read_keras_file(path: Path) -> KerasFile:
    """The weighted layers of a Keras weights file (any of the three layouts), unmapped."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file; pass a .keras, .weights.h5 or Keras 2 .h5 file with ImageNet Xception")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if "model.weights.h5" not in names:
                    raise WeightsError(f"{path}: a zip without model.weights.h5 (has {', '.join(names[:5])}): not a Keras 3 .keras file")
                config = json.loads(zf.read("config.json")) if "config.json" in names else None
                meta = json.loads(zf.read("metadata.json")) if "metadata.json" in names else {}
                blob = zf.read("model.weights.h5")
            if config is not None:
                _check_config(config)
            with h5py.File(io.BytesIO(blob), "r") as h5:
                out = _read_keras3(h5, "keras3-zip")
            out.keras_version = meta.get("keras_version")
            return out
        with h5py.File(path, "r") as h5:
            if "layers" in h5 and "layer_names" not in h5.attrs:
                return _read_keras3(h5, "keras3-weights-h5")
            return _read_keras2(h5)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"{path}: not a readable Keras weights file ({type(exc).__name__}: {exc})") from exc


# ---- mapping ------------------------------------------------------------------------------------------------------

def _to_torch(kind: str, vars_: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if kind == "conv":
        return {"weight": vars_["kernel"].transpose(3, 2, 0, 1)}
    if kind == "sep":
        return {"conv1.weight": vars_["depthwise_kernel"].transpose(2, 3, 0, 1),
                "pointwise.weight": vars_["pointwise_kernel"].transpose(3, 2, 0, 1)}
    return {"weight": vars_["gamma"], "bias": vars_["beta"], "running_mean": vars_["moving_mean"],
            "running_var": vars_["moving_variance"] + np.float32(KERAS_BN_EPS - TORCH_BN_EPS)}


def map_to_timm(kf: KerasFile, expected_shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Every Xception variable of ``kf`` under its timm name, each exactly once; refuse anything else by name.

    ``expected_shapes``: timm ``legacy_xception``'s state dict shapes (without the classifier), the ground truth for
    names and shapes.
    """
    wanted = xception_layers()
    by_kind: dict[str, list[FileLayer]] = {k: [x for x in kf.layers if x.kind == k] for k in KIND_VARS}
    state: dict[str, np.ndarray] = {}
    for kind, layers_k in by_kind.items():
        want_k = [w for w in wanted if w.kind == kind]
        if len(layers_k) > len(want_k):
            extra = layers_k[len(want_k)]
            raise WeightsError(f"{extra.path} ({KIND_CLASS[kind]}) is left over: Keras' Xception has {len(want_k)} "
                               f"{KIND_CLASS[kind]} layers, the file {len(layers_k)}")
        if len(layers_k) < len(want_k):
            miss = want_k[len(layers_k)]
            raise WeightsError(f"{miss.name} ({KIND_CLASS[kind]}) is missing: the file has {len(layers_k)} "
                               f"{KIND_CLASS[kind]} layers where Keras' Xception has {len(want_k)}")
        for want, layer in zip(want_k, layers_k):
            if kf.layout == "keras2-h5" and want.named_in_keras and layer.name != want.name:
                raise WeightsError(f"{layer.path} stands where Keras' Xception has {want.name}: not Keras' Xception")
            need = KIND_VARS[kind]
            for var in need:
                if var not in layer.vars:
                    raise WeightsError(f"{layer.path} ({want.name}) is missing its variable {var!r}")
            left = sorted(set(layer.vars) - set(need))
            if left:
                raise WeightsError(f"{layer.path} ({want.name}) has variable(s) {', '.join(left)} that Keras' Xception "
                                   "does not (a bias?): left over")
            for suffix, value in _to_torch(kind, layer.vars).items():
                key = f"{want.target}.{suffix}"
                if key not in expected_shapes:
                    raise WeightsError(f"{layer.path} ({want.name}) maps to {key}, which timm's legacy_xception lacks")
                if tuple(value.shape) != tuple(expected_shapes[key]):
                    src = {"weight": "kernel"}.get(suffix, suffix)
                    raise WeightsError(f"{layer.path} ({want.name}, {src}): shape {tuple(value.shape)} after the layout change "
                                       f"where timm's legacy_xception wants {tuple(expected_shapes[key])}")
                state[key] = np.ascontiguousarray(value, dtype=np.float32)
    unmapped = sorted(k for k in expected_shapes if k not in state and not k.endswith("num_batches_tracked"))
    if unmapped:
        raise WeightsError(f"timm's legacy_xception variable(s) {', '.join(unmapped[:5])} got no value from the file")
    return state
