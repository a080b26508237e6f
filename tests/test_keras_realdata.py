"""The real Keras ImageNet Xception (../shared/weights/keras), converted by `stage-weights --from-keras`, reproduces
the classifier it ships in: the package's own Dense(100, relu) -> Dense(6) on our Xception's features at 150 px
classifies its 9 check images. Skipped with a message where the folder is absent."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

KERAS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "keras"
CLASSES = ["cup", "fork", "glass", "knife", "plate", "spoon"]  # the package's classes, alphabetical

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def keras_file() -> Path:
    files = sorted(KERAS_DIR.glob("*.keras")) if KERAS_DIR.is_dir() else []
    if not files or not (KERAS_DIR / "kitchenware-check" / "labels.csv").is_file():
        pytest.skip(f"Keras ImageNet Xception not found at {KERAS_DIR} (see its README.md)")
    return files[0]


def _package_head(path: Path) -> list[np.ndarray]:
    import h5py

    with zipfile.ZipFile(path) as zf, h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as h5:
        return [np.asarray(h5[f"layers/{name}/vars/{i}"]) for name in ("dense", "dense_1") for i in (0, 1)]


def _keras_image(path: Path) -> np.ndarray:
    """Keras' loader: nearest-neighbour resize to 150 px; Xception's preprocessing: RGB to [-1, 1]."""
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((150, 150), Image.NEAREST)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def test_converted_xception_reproduces_the_packages_classifier(keras_file: Path, tmp_path: Path) -> None:
    import torch

    from xincept.client.cli import app
    from xincept.common.backbones import load_backbone
    from xincept.common.config import BackboneConfig
    from xincept.common.weights_staging import file_sha256

    out = tmp_path / "W"
    res = CliRunner().invoke(app, ["stage-weights", "--from-keras", str(keras_file), "--out", str(out)])
    assert res.exit_code == 0, res.output
    bb = load_backbone("legacy_xception", BackboneConfig(names=("legacy_xception",), input_size=150, weights_dir=out))
    assert bb.weights == "imagenet (keras)" and bb.source["source_sha256"] == file_sha256(keras_file)
    assert bb.data_config["mean"] == [0.5, 0.5, 0.5] and bb.data_config["std"] == [0.5, 0.5, 0.5]  # = x / 127.5 - 1

    rows = list(csv.DictReader((KERAS_DIR / "kitchenware-check" / "labels.csv").open()))
    x = torch.from_numpy(np.stack([_keras_image(KERAS_DIR / "kitchenware-check" / r["image"]) for r in rows])).permute(0, 3, 1, 2)
    with torch.no_grad():
        feats = bb.model(x).numpy()
    w1, b1, w2, b2 = _package_head(keras_file)
    predicted = [CLASSES[k] for k in (np.maximum(feats @ w1 + b1, 0) @ w2 + b2).argmax(1)]
    assert predicted == [r["label"] for r in rows]  # all 9 (random weights: about 1 in 6)
