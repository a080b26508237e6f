"""XGBoost boosting from the head's logits (``xgb-margin head``): what it learns, and that every path predicts with it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from xincept.common.bundle import BundleError, read_bundle, write_bundle
from xincept.common.classifiers import XGBInput, fit_xgb, xgb_predict_proba
from xincept.common.config import HeadConfig, RunConfig, SettingError, XGBConfig
from xincept.common.model import fit_model
from xincept.common.train_head import predict_logits, softmax, xgb_data


def _feats(n: int = 160, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    centres = rng.normal(size=(4, 12))
    return [(centres[y] + rng.normal(scale=1.5, size=(n, 12))).astype(np.float32),
            (rng.normal(size=(n, 8)) + y[:, None] * 0.3).astype(np.float32)], y


CFG = RunConfig(head=HeadConfig(max_epochs=5), xgb=XGBConfig(n_estimators=20, early_stopping_rounds=5))
TRAIN, VAL = np.arange(0, 120), np.arange(120, 160)


def test_a_booster_with_head_margin_starts_from_the_heads_prediction() -> None:
    feats, y = _feats()
    model = fit_model(feats, None, y, TRAIN, VAL, ["a", "b", "c", "d"], CFG)
    assert model.xgb_margin == "head"  # the default
    rows = model.xgb_inputs(feats)
    np.testing.assert_allclose(rows.margin, predict_logits(model.head, feats), rtol=1e-6)
    # one tree per class with a vanishing step leaves the prediction where boosting started: the head's softmax
    tiny = fit_xgb(rows[TRAIN], y[TRAIN], None, None, 4, XGBConfig(n_estimators=1, learning_rate=1e-6))
    np.testing.assert_allclose(xgb_predict_proba(tiny, rows), softmax(rows.margin), atol=1e-5)
    # without the margin the same booster predicts from a constant: nearly uniform
    assert np.abs(xgb_predict_proba(tiny, rows.x) - 0.25).max() < 1e-3


def test_margin_none_is_the_thesis_booster_on_features_alone() -> None:
    feats, y = _feats()
    cfg = replace(CFG, xgb=replace(CFG.xgb, margin="none"))
    model = fit_model(feats, None, y, TRAIN, VAL, ["a", "b", "c", "d"], cfg)
    rows = model.xgb_inputs(feats)
    assert model.xgb_margin == "none" and rows.margin is None
    np.testing.assert_allclose(model.predict_proba(feats), xgb_predict_proba(model.booster, rows.x))


def test_the_bundle_records_the_margin_and_predicts_with_it(tmp_path: Path) -> None:
    feats, y = _feats()
    model = fit_model(feats, None, y, TRAIN, VAL, ["a", "b", "c", "d"], CFG)
    write_bundle(tmp_path / "model", model, {})
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["classifier"] == {**meta["classifier"], "kind": "xgboost", "features": "branches", "base_margin": "head-logits"}
    again, _ = read_bundle(tmp_path / "model")
    assert again.xgb_margin == "head"
    np.testing.assert_allclose(again.predict_proba(feats), model.predict_proba(feats), atol=1e-6)

    del meta["classifier"]["base_margin"]  # a bundle written before base margins: boosted from a constant
    (tmp_path / "model" / "model.json").write_text(json.dumps(meta))
    assert read_bundle(tmp_path / "model")[0].xgb_margin == "none"
    meta["classifier"]["base_margin"] = "embedding"
    (tmp_path / "model" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="base_margin 'embedding'"):
        read_bundle(tmp_path / "model")


def test_xgb_input_rows_keep_features_and_margins_together() -> None:
    rows = XGBInput(np.arange(12.0).reshape(6, 2), np.arange(24.0).reshape(6, 4))
    part = rows[np.array([4, 1])]
    assert len(part) == 2 and part.x.tolist() == [[8, 9], [2, 3]] and part.margin[:, 0].tolist() == [16, 4]
    assert XGBInput(rows.x)[np.array([0])].margin is None


def test_unknown_margin_is_refused_with_the_choices() -> None:
    with pytest.raises(SettingError, match="xgb-margin='logits'.*head.*none"):
        XGBConfig(margin="logits")
    feats, _ = _feats(8)
    from xincept.common.head import FusedHead

    with pytest.raises(ValueError, match="margin 'x'"):
        xgb_data(FusedHead([12, 8], 4), feats, "branches", "x")


def test_federation_settings_carry_the_margin_to_sites_and_refuse_unknown_ones() -> None:
    from xincept.common.fedconfig import FedSettings

    settings = FedSettings(xgb_margin="none")
    assert settings.client_flat()["xgb-margin"] == "none"  # what every site receives in its run config
    assert FedSettings.from_flat(settings.client_flat()).xgb_config().margin == "none"
    assert FedSettings().xgb_config().margin == "head"  # the default
    with pytest.raises(SettingError, match="xgb-margin='logits'"):  # at load time, not after the head rounds
        FedSettings(xgb_margin="logits")
