"""Keras ImageNet Xception -> timm legacy_xception: the mapping, on small generated files in each Keras layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.keras_files import REAL, write_keras2_h5, write_keras3_h5, write_keras_zip, xception_values
from xincept.common.backbones import load_backbone, staged_weights_file
from xincept.common.config import BackboneConfig
from xincept.common.errors import WeightsError
from xincept.common.keras_xception import xception_layers
from xincept.common.weights_staging import (convert_keras_xception, file_sha256, stage_from_keras,
                                            verify_staged_weights)


@pytest.fixture(scope="module")
def values() -> dict:
    return xception_values(seed=1)


def _expected(values: dict) -> dict[str, np.ndarray | float]:
    """What each timm variable must hold, written out layer by layer (independently of the converter's table)."""
    out: dict[str, np.ndarray | float] = {}
    for layer in xception_layers():
        v = values[layer.name]
        if layer.kind == "conv":
            out[f"{layer.target}.weight"] = v["kernel"] if not isinstance(v["kernel"], np.ndarray) else \
                np.einsum("hwio->oihw", v["kernel"])
        elif layer.kind == "sep":
            d, p = v["depthwise_kernel"], v["pointwise_kernel"]
            out[f"{layer.target}.conv1.weight"] = np.einsum("hwco->cohw", d) if isinstance(d, np.ndarray) else d
            out[f"{layer.target}.pointwise.weight"] = np.einsum("hwio->oihw", p) if isinstance(p, np.ndarray) else p
        else:
            out[f"{layer.target}.weight"], out[f"{layer.target}.bias"] = v["gamma"], v["beta"]
            out[f"{layer.target}.running_mean"] = v["moving_mean"]
            out[f"{layer.target}.running_var"] = v["moving_variance"] + np.float32(1e-3 - 1e-5)
    return out


def _check_state(state: dict, values: dict) -> None:
    want = _expected(values)
    assert set(want) == {k for k in state if not k.endswith("num_batches_tracked")}
    for key, value in want.items():
        got = state[key].numpy()
        if isinstance(value, np.ndarray):
            np.testing.assert_allclose(got, value, rtol=0, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_allclose(got, np.full_like(got, value), rtol=1e-6, err_msg=key)


def test_every_layout_maps_every_variable_to_its_timm_name(tmp_path: Path, values: dict) -> None:
    sources = {"keras3-zip": write_keras_zip(tmp_path / "m.keras", values),
               "keras2-h5": write_keras2_h5(tmp_path / "xception_notop.h5", values)}
    write_keras3_h5(tmp_path / "alone.weights.h5", values, nested=False)
    sources["keras3-weights-h5"] = tmp_path / "alone.weights.h5"
    write_keras3_h5(tmp_path / "nested.weights.h5", values, nested=True)
    for layout, path in sources.items():
        state, record = convert_keras_xception(path)
        _check_state(state, values)
        assert record["source"]["layout"] == layout and record["source"]["sha256"] == file_sha256(path)
        assert record["conversion"]["variables_mapped"] == 6 + 34 * 2 + 40 * 4
    nested_state, nested = convert_keras_xception(tmp_path / "nested.weights.h5")
    assert nested["conversion"]["ignored_outside_xception"] == ["layers/dense", "layers/dense_1"]
    assert nested["fingerprint"] == record["fingerprint"]  # the same network, whichever layout it came in
    assert REAL  # the random layers above checked the transposes element by element


def test_staged_file_is_labelled_loaded_and_verified(tmp_path: Path, values: dict) -> None:
    src = write_keras_zip(tmp_path / "m.keras", values)
    out = tmp_path / "W"
    record = stage_from_keras(src, out)
    bb = load_backbone("legacy_xception", BackboneConfig(names=("legacy_xception",), input_size=80, weights_dir=out))
    assert bb.weights == "imagenet (keras)" and bb.fingerprint == record["fingerprint"]
    desc = bb.describe()
    assert desc["weights_source"]["source_sha256"] == file_sha256(src) and desc["weights_source"]["converted_from"] == "m.keras"
    assert set(verify_staged_weights(out, ("legacy_xception",))) == {"legacy_xception.safetensors"}
    saved = json.loads((out / "legacy_xception.source.json").read_text())
    assert saved["source"]["sha256"] == file_sha256(src) and saved["weights"] == "imagenet (keras)"
    # a record that no longer matches its file is caught, even when SHA256SUMS.txt was updated with the file
    saved["fingerprint"] = "0" * 64
    (out / "legacy_xception.source.json").write_text(json.dumps(saved))
    with pytest.raises(WeightsError, match="fingerprint differs"):
        verify_staged_weights(out, ("legacy_xception",))


@pytest.mark.parametrize("damage, named", [
    (dict(drop=("block7_sepconv2_bn", "moving_variance")), "batch_normalization_"),
    (dict(reshape=("block5_sepconv3", "pointwise_kernel")), "pointwise"),
    (dict(reshape=("block1_conv1", "kernel")), "block1_conv1"),
    (dict(extra_sep=True), "separable_conv2d_34"),
])
def test_a_damaged_file_is_refused_by_name_and_nothing_is_written(tmp_path: Path, values: dict, damage: dict, named: str) -> None:
    src = write_keras_zip(tmp_path / "m.keras", values, **damage)
    out = tmp_path / "W"
    with pytest.raises(WeightsError) as err:
        stage_from_keras(src, out)
    assert named in str(err.value) and str(src) in str(err.value)
    assert not out.exists()


def test_a_removed_variable_is_named_in_keras_terms(tmp_path: Path, values: dict) -> None:
    path = tmp_path / "w.weights.h5"
    write_keras3_h5(path, values, drop=("block7_sepconv2_bn", "moving_variance"))
    with pytest.raises(WeightsError, match=r"block7_sepconv2_bn\) is missing its variable 'moving_variance'"):
        convert_keras_xception(path)


def test_not_an_xception_is_refused(tmp_path: Path) -> None:
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5.create_group("dense").attrs["weight_names"] = [b"dense/kernel:0"]
        h5["dense"].create_dataset("dense/kernel:0", data=np.zeros((4, 2), np.float32))
        h5.attrs["layer_names"] = [b"dense"]
    with pytest.raises(WeightsError, match="missing"):
        convert_keras_xception(tmp_path / "other.h5")
    (tmp_path / "junk.keras").write_bytes(b"not a zip, not hdf5")
    with pytest.raises(WeightsError, match="junk.keras"):
        convert_keras_xception(tmp_path / "junk.keras")


def test_stage_weights_cli_from_keras(tmp_path: Path, values: dict) -> None:
    from xincept.client.cli import app

    src = write_keras2_h5(tmp_path / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", values)
    out = tmp_path / "W"
    res = CliRunner().invoke(app, ["stage-weights", "--from-keras", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "imagenet (keras)" in res.output and file_sha256(src) in res.output
    assert staged_weights_file(out, "legacy_xception").is_file()
    res = CliRunner().invoke(app, ["verify-weights", "--weights-dir", str(out), "--backbones", "legacy_xception"])
    assert res.exit_code == 0 and "OK" in res.output and "imagenet (keras)" in res.output, res.output
    res = CliRunner().invoke(app, ["stage-weights", "--from-keras", str(tmp_path / "absent.h5"), "--out", str(out)])
    assert res.exit_code == 2 and "absent.h5" in res.output


def test_mixed_weights_need_to_be_asked_for_and_are_labelled(tmp_path: Path, values: dict) -> None:
    from xincept.common.errors import SettingError
    from xincept.common.site import weights_meta

    out = tmp_path / "W"
    stage_from_keras(write_keras_zip(tmp_path / "m.keras", values), out)
    names = ("legacy_xception", "test_resnet")
    with pytest.raises(WeightsError, match="test_resnet.safetensors"):  # a missing staged file still stops the run
        load_backbone("test_resnet", BackboneConfig(names=names, input_size=80, weights_dir=out))
    cfg = BackboneConfig(names=names, input_size=80, weights_dir=out, random_backbones=("test_resnet",))
    backbones = [load_backbone(n, cfg) for n in names]
    meta = weights_meta(backbones)
    assert meta["weights"] == "mixed"
    assert meta["backbone_weights"] == {"legacy_xception": "imagenet (keras)", "test_resnet": "random"}
    assert "test_resnet" in meta["warning"] and "legacy_xception" not in meta["warning"]
    with pytest.raises(SettingError, match="inception_v3"):
        BackboneConfig(names=names, random_backbones=("inception_v3",))
