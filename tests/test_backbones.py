from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xincept.common.backbones import fingerprint_state_dict, load_backbone, staged_weights_file
from xincept.common.config import BackboneConfig
from xincept.common.errors import WeightsError

CFG = BackboneConfig(names=("test_resnet",), input_size=80, pretrained=False)


def test_random_backbone_is_frozen_deterministic_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    a = load_backbone("test_resnet", CFG)
    b = load_backbone("test_resnet", CFG)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert a.weights == "random"  # the command warns once (warn_random_weights); every output records it
    assert not a.model.training and not any(p.requires_grad for p in a.model.parameters())
    out = a.model(torch.zeros(2, 3, 80, 80))
    assert out.shape == (2, a.num_features)


def test_each_backbone_has_its_own_preprocessing_at_the_set_size() -> None:
    r = load_backbone("test_resnet", CFG)
    e = load_backbone("test_efficientnet", CFG)
    assert r.data_config["input_size"] == e.data_config["input_size"] == [3, 80, 80]
    assert r.data_config["mean"] != e.data_config["mean"]
    assert r.preprocess_key != e.preprocess_key


def test_fingerprint_changes_with_any_weight() -> None:
    bb = load_backbone("test_resnet", CFG)
    state = {k: v.clone() for k, v in bb.model.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first].view(-1)[0] += 1e-3
    assert fingerprint_state_dict(state) != bb.fingerprint


def test_missing_staged_weights_name_the_file_and_how_to_stage(tmp_path: Path) -> None:
    cfg = BackboneConfig(names=("test_resnet",), pretrained=True, weights_dir=tmp_path)
    with pytest.raises(WeightsError) as err:
        load_backbone("test_resnet", cfg)
    msg = str(err.value)
    assert str(tmp_path / "test_resnet.safetensors") in msg and "stage-weights" in msg


def test_staged_weights_load_offline_with_the_same_fingerprint(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(123)
    import timm

    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(staged_weights_file(tmp_path, "test_resnet")))
    bb = load_backbone("test_resnet", BackboneConfig(names=("test_resnet",), pretrained=True, weights_dir=tmp_path))
    assert bb.weights.startswith("local:")
    assert bb.fingerprint == fingerprint_state_dict(model.state_dict())


def test_damaged_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    staged_weights_file(tmp_path, "test_resnet").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="could not be loaded"):
        load_backbone("test_resnet", BackboneConfig(names=("test_resnet",), pretrained=True, weights_dir=tmp_path))


def test_weights_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XINCEPT_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="test_resnet.safetensors"):
        load_backbone("test_resnet", BackboneConfig(names=("test_resnet",), pretrained=True))


def test_unknown_backbone_name() -> None:
    with pytest.raises(WeightsError, match="unknown backbone"):
        load_backbone("not_a_model", CFG)
