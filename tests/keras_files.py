"""Small generated Keras weight files in the three layouts the converter reads (no Keras needed).

Every Xception variable has its real shape but is stored as an HDF5 fill value (a constant, nothing written), so a
file is a few hundred kB; the layers in ``REAL`` hold random numbers, which check the layout changes element by element.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np

from xincept.common.keras_xception import KIND_CLASS, KIND_VARS, XceptionLayer, xception_layers

REAL = ("block1_conv1", "block1_conv1_bn", "block2_sepconv1", "block2_residual", "block14_sepconv2_bn")
AUTO = {"conv": "conv2d", "sep": "separable_conv2d", "bn": "batch_normalization"}


def timm_shapes() -> dict[str, tuple[int, ...]]:
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model("legacy_xception", pretrained=False, num_classes=0)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def keras_shapes(layer: XceptionLayer, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    t = layer.target
    if layer.kind == "conv":
        o, i, kh, kw = shapes[f"{t}.weight"]
        return {"kernel": (kh, kw, i, o)}
    if layer.kind == "sep":
        c, _, kh, kw = shapes[f"{t}.conv1.weight"]
        o = shapes[f"{t}.pointwise.weight"][0]
        return {"depthwise_kernel": (kh, kw, c, 1), "pointwise_kernel": (1, 1, c, o)}
    n = shapes[f"{t}.weight"][0]
    return {v: (n,) for v in KIND_VARS["bn"]}


def xception_values(seed: int = 0) -> dict[str, dict[str, np.ndarray | float]]:
    """Per Keras layer name, per variable: a random array (layers in REAL) or a distinct constant."""
    rng = np.random.default_rng(seed)
    shapes = timm_shapes()
    out: dict[str, dict[str, np.ndarray | float]] = {}
    k = 0
    for layer in xception_layers():
        out[layer.name] = {}
        for var, shape in keras_shapes(layer, shapes).items():
            k += 1
            if layer.name in REAL:
                value = rng.standard_normal(shape).astype(np.float32)
                out[layer.name][var] = np.abs(value) if var == "moving_variance" else value
            else:
                out[layer.name][var] = float(k)
    return out


def _shape_of(value: np.ndarray | float, layer: XceptionLayer, var: str, shapes) -> tuple[int, ...]:
    return value.shape if isinstance(value, np.ndarray) else keras_shapes(layer, shapes)[var]


def _put(group: h5py.Group, name: str, value: np.ndarray | float, shape: tuple[int, ...]) -> None:
    if isinstance(value, np.ndarray):
        group.create_dataset(name, data=value)
    else:
        group.create_dataset(name, shape=shape, dtype="f4", fillvalue=value)


def auto_names() -> dict[str, str]:
    """Keras 3's auto names (per-class counter in layer-list order) of Xception's layers."""
    count: dict[str, int] = {}
    out = {}
    for layer in xception_layers():
        i = count.get(layer.kind, 0)
        count[layer.kind] = i + 1
        out[layer.name] = AUTO[layer.kind] + (f"_{i}" if i else "")
    return out


def write_keras3_h5(target, values, nested: bool = True, drop: tuple[str, str] | None = None,
                    reshape: tuple[str, str] | None = None, extra_sep: bool = False) -> None:
    """A Keras 3 ``model.weights.h5``: the Xception nested under ``layers/functional`` with a Dense head, or alone."""
    shapes = timm_shapes()
    names = auto_names()
    with h5py.File(target, "w") as h5:
        base = h5.create_group("layers/functional/layers" if nested else "layers")
        for layer in xception_layers():
            g = base.create_group(f"{names[layer.name]}/vars")
            for i, (var, value) in enumerate(values[layer.name].items()):
                if drop == (layer.name, var):
                    continue
                shape = _shape_of(value, layer, var, shapes)
                if reshape == (layer.name, var):
                    value, shape = float(value) if not isinstance(value, np.ndarray) else 1.0, tuple(s + 1 for s in shape)
                _put(g, str(i), value, shape)
        base.create_group("input_layer/vars")  # an unweighted layer, as Keras writes them
        if extra_sep:
            _put(base.create_group("separable_conv2d_34/vars"), "0", 0.5, (3, 3, 2048, 1))
        if nested:
            for name, shape in (("dense", (2048, 100)), ("dense_1", (100, 6))):
                g = h5.create_group(f"layers/{name}/vars")
                _put(g, "0", 0.1, shape)
                _put(g, "1", 0.0, shape[-1:])


def write_keras_zip(path: Path, values, **kw) -> Path:
    """A Keras 3 ``.keras`` zip: config.json (a classifier on a nested Xception), metadata.json, model.weights.h5."""
    buf = io.BytesIO()
    write_keras3_h5(buf, values, nested=True, **kw)
    residual = iter(["conv2d", "conv2d_1", "conv2d_2", "conv2d_3"])
    residual_bn = iter(["batch_normalization", "batch_normalization_1", "batch_normalization_2", "batch_normalization_3"])
    layers = [{"class_name": "InputLayer", "config": {"name": "input_layer"}}]
    for layer in xception_layers():
        name = layer.name if layer.named_in_keras else next(residual_bn if layer.kind == "bn" else residual)
        layers.append({"class_name": KIND_CLASS[layer.kind], "config": {"name": name}})
    config = {"class_name": "Functional", "config": {"name": "functional", "layers": [
        {"class_name": "InputLayer", "config": {"name": "input_layer_1"}},
        {"class_name": "Functional", "config": {"name": "xception", "layers": layers}},
        {"class_name": "Dense", "config": {"name": "dense"}}, {"class_name": "Dense", "config": {"name": "dense_1"}}]}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.3.3"}))
        zf.writestr("model.weights.h5", buf.getvalue())
    return path


def write_keras2_h5(path: Path, values) -> Path:
    """Keras 2 applications' ``xception_weights_tf_dim_ordering_tf_kernels_notop.h5`` layout."""
    shapes = timm_shapes()
    residual = iter(["conv2d_1", "conv2d_2", "conv2d_3", "conv2d_4"])
    residual_bn = iter(["batch_normalization_1", "batch_normalization_2", "batch_normalization_3", "batch_normalization_4"])
    order = []
    with h5py.File(path, "w") as h5:
        for layer in xception_layers():
            name = layer.name if layer.named_in_keras else next(residual_bn if layer.kind == "bn" else residual)
            order.append(name)
            g = h5.create_group(name)
            wn = []
            for var, value in values[layer.name].items():
                _put(g, f"{name}/{var}:0", value, _shape_of(value, layer, var, shapes))
                wn.append(f"{name}/{var}:0".encode())
            g.attrs["weight_names"] = wn
        for name in ("input_1", "block1_conv1_act", "add_1"):
            h5.create_group(name).attrs["weight_names"] = []
            order.insert(1, name)
        h5.attrs["layer_names"] = [n.encode() for n in order]
        h5.attrs["keras_version"] = b"2.2.4"
    return path
