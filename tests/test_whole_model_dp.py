"""Whole-model DP as a run mode (`--dp-mode whole-model`): settings, the site's ledger, the model, a simulated run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from xincept.common.errors import SettingError
from xincept.common.fedconfig import FedSettings


def test_whole_model_mode_settles_what_would_leave_outside_the_budget() -> None:
    s = FedSettings(dp_mode="whole-model", dp_epsilon=3.0, loso=True)
    assert (s.xgb_mode, s.loso, s.local_only, s.head_members) == ("none", False, False, 1)
    # steps not given: fewer for more noise (chosen on the validation splits); given: as given, also through the
    # settings every site receives (the plan must be the same at the server and at every site)
    assert (s.dp_steps, FedSettings(dp_mode="whole-model", dp_epsilon=8.0).dp_steps) == (80, 160)
    # distributed noise (secure aggregation) is smaller per step: more steps below epsilon 5, from epsilon 2
    secure = {e: FedSettings(dp_mode="whole-model", dp_epsilon=e, secure_aggregation=True).dp_steps for e in (1.0, 3.0, 8.0)}
    assert secure == {1.0: 80, 3.0: 120, 8.0: 160}
    # the input size follows the mode unless given: 299 px in whole-model DP (better features for the linear head)
    assert (s.input_size, FedSettings().input_size, FedSettings(dp_epsilon=3.0).input_size) == (299, 224, 224)
    assert FedSettings(dp_mode="whole-model", dp_epsilon=3.0, input_size=224).input_size == 224
    assert FedSettings.from_flat(s.client_flat()).input_size == 299  # the sites embed at the size the server settled
    with pytest.raises(SettingError, match="input-size=8"):
        FedSettings(input_size=8)
    given = FedSettings(dp_mode="whole-model", dp_epsilon=8.0, dp_steps=12)
    assert given.dp_steps == 12 and FedSettings.from_flat(given.client_flat()).dp_steps == 12
    with pytest.raises(SettingError, match="--dp-epsilon"):
        FedSettings(dp_mode="whole-model")
    with pytest.raises(SettingError, match="dp-unit"):
        FedSettings(dp_mode="whole-model", dp_epsilon=3.0, dp_unit="slide")
    with pytest.raises(SettingError, match="resume"):
        FedSettings(dp_mode="whole-model", dp_epsilon=3.0, resume=True)
    with pytest.raises(SettingError, match="dp-mode"):
        FedSettings(dp_mode="everything", dp_epsilon=3.0)


def _local(tmp: Path, **settings) -> SimpleNamespace:
    """A site as whole_model_dp sees it: settings, name, a data set digest, 40 training and 12 test images."""
    rng = np.random.default_rng(0)
    feats = [np.abs(rng.normal(size=(52, 6))), np.abs(rng.normal(size=(52, 4)))]
    y = np.arange(52) % 4
    feats[0][np.arange(52), y] += 3.0  # separable: class c lifts feature c
    site = SimpleNamespace(feats=feats, y=y, groups=[f"g{i // 5}" for i in range(52)],
                           data=SimpleNamespace(records=[SimpleNamespace(sha256=f"{i:064x}") for i in range(52)]))
    s = FedSettings(dp_mode="whole-model", **{"dp_epsilon": 8.0, "dp_steps": 5, **settings})
    return SimpleNamespace(name="site-a", settings=s, site=site, classes=["a", "b", "c", "d"], standardised={},
                           split={"train": np.arange(40), "val": np.arange(0), "test": np.arange(40, 52)})


def test_a_site_releases_its_plan_and_refuses_anything_beyond_it(tmp_path: Path) -> None:
    from xincept.client import whole_model_dp as wm
    from xincept.common.dp import BudgetSpent
    from xincept.common.privacy_accounting import epsilon_of

    local = _local(tmp_path)
    ledger = tmp_path / "ledger.json"
    sums, _ = wm.feature_stats(local, ledger)
    assert sums.shape == (10 + 4,)  # the feature sum, then a count per class
    w, mean = np.zeros((11, 4)), sums[:-4] / max(sums[-4:].sum(), 1.0)
    for _ in range(5):
        g, spent = wm.gradient(local, w, mean, ledger)
        assert g.shape == (10, 4) and spent["dp-epsilon"] < 8.0  # the weights' gradient: the bias is fixed
    with pytest.raises(BudgetSpent, match="plan for this run allows 5"):
        wm.gradient(local, w, mean, ledger)  # a sixth step is outside the plan: refused, nothing released
    with pytest.raises(BudgetSpent, match="test split"):
        wm.test_counts(local, {}, "val", ledger)
    doc = json.loads(ledger.read_text())
    (run,) = doc["releases"][next(iter(doc["releases"]))].values()
    assert sorted(r["count"] for r in run.values()) == [1, 5]  # the feature sum and counts once, five steps (the refused one not)
    from xincept.common.dp import PrivacyLedger

    key = wm.run_key(local.settings)
    releases = PrivacyLedger(ledger, next(iter(doc["releases"]))).releases(key)
    assert epsilon_of(releases, 1e-5) < 8.0
    # another run (another seed) on the same images spends from the same lifetime budget: with a lifetime of what the
    # first run spent, its first release is refused
    other = _local(tmp_path, seed=1)
    with pytest.raises(BudgetSpent, match="lifetime"):
        wm.feature_stats(other, ledger, lifetime_epsilon=spent["dp-epsilon"] + 0.01)
    wm.feature_stats(other, ledger)  # without a lifetime cap the new run has its own budget


def test_the_noise_is_not_reproducible_from_the_settings(tmp_path: Path) -> None:
    from xincept.client import whole_model_dp as wm

    local = _local(tmp_path, dp_steps=2)
    a, _ = wm.feature_stats(local, tmp_path / "a.json")
    b, _ = wm.feature_stats(local, tmp_path / "b.json")
    assert not np.allclose(a, b)  # the same site, settings and data: other noise (a server cannot subtract it)


def test_patient_cap_counts_each_group_at_most_block_times() -> None:
    from xincept.client.whole_model_dp import _capped

    idx = np.arange(10)
    groups = ["a"] * 6 + ["b"] * 2 + ["c"] * 2
    keep = _capped(idx, groups, 3)
    assert keep.tolist() == [True] * 3 + [False] * 3 + [True] * 4


def test_the_linear_probe_is_the_protocol_s_model_and_survives_the_bundle(tmp_path: Path) -> None:
    import torch

    from xincept.common.bundle import read_bundle, write_bundle
    from xincept.common.dp_linear import LinearProbe, predict_proba, scale_features
    from xincept.common.model import XinceptModel

    rng = np.random.default_rng(1)
    feats = [np.abs(rng.normal(size=(7, 6))).astype(np.float32), np.abs(rng.normal(size=(7, 4))).astype(np.float32)]
    x = scale_features(feats)
    w, mean = rng.normal(size=(11, 4)), x.mean(0)
    probe = LinearProbe([6, 4], 4).set_weights(w, mean)
    write_bundle(tmp_path / "model", XinceptModel(probe, None, ["a", "b", "c", "d"], "branches", "none"), {"note": "test"})
    assert not (tmp_path / "model" / "xgb.json").exists()
    model, meta = read_bundle(tmp_path / "model")
    assert meta["classifier"]["kind"] == "head-softmax" and isinstance(model.head, LinearProbe)
    np.testing.assert_allclose(model.predict_proba(feats), predict_proba(w, mean, x), atol=1e-5)
    logits = model.head([torch.as_tensor(f) for f in feats])
    assert logits.shape == (7, 4)


@pytest.mark.integration
def test_a_simulated_whole_model_dp_run_accounts_for_every_release(tmp_path: Path) -> None:
    """3 sites, epsilon 4: every message a site sent is one of the plan's releases; metrics.json, model.json and the
    report state one epsilon per site that an independent composition of the sites' ledgers reproduces."""
    import os

    from xincept.common.bundle import read_bundle
    from xincept.common.privacy_accounting import Release, epsilon_of
    from xincept.common.synthetic import write_image_folder
    from xincept.server.simulate import run_simulated_federation

    data = write_image_folder(tmp_path / "data", per_class=24, size=64)
    audit = tmp_path / "audit.jsonl"
    os.environ["XINCEPT_AUDIT_LOG"] = str(audit)
    try:
        settings = FedSettings(out_dir=str(tmp_path / "out"), dp_mode="whole-model", dp_epsilon=4.0, dp_steps=12,
                               backbones="test_resnet,test_efficientnet", input_size=80, pretrained=False, group_block=2, min_cell_count=2)
        m = run_simulated_federation(data, 3, "iid", settings, cache_dir=tmp_path / "cache", reference=False)
    finally:
        del os.environ["XINCEPT_AUDIT_LOG"]
    out = tmp_path / "out"
    assert set(m["privacy"]) == {"site-0", "site-1", "site-2"} and m["xgb"]["mode"] == "none"
    for site, p in m["privacy"].items():
        assert p["unit"] == "image" and p["delta"] == 1e-5 and 0 < p["epsilon"] <= 4.0
        kinds = {r["what"]: r["count"] for r in p["releases"]}
        assert kinds == {"feature sum and class counts of the scaled features": 1, "clipped gradient sums of the linear head": 12,
                         "test split: numbers of correct and wrong predictions": 1}
        ledger = json.loads((out / "partitions" / f"privacy-{site}.json").read_text())
        (run,) = next(iter(ledger["releases"].values())).values()  # what the site itself recorded
        assert epsilon_of([Release(**r) for r in run.values()], 1e-5) == pytest.approx(p["epsilon"], rel=1e-9)
    assert "everything that left each site" in m["privacy_scope"]
    g = m["global"]
    assert "auc_ovr" in g["withheld"] and g["loss"] is None  # never computed from what did not leave
    assert all(row["sensitivity"] is None for row in g["per_class"].values())  # no cell of any confusion matrix left
    assert g["dp_noise"]["per_count_sd_per_site"] > 0 and g["dp_noise"]["accuracy_sd"] > 0
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["privacy"] == m["privacy"] and meta["data_summary"]["n_images"] is None  # no count left at join
    model, _ = read_bundle(out / "model")
    assert model.booster is None and type(model.head).__name__ == "LinearProbe"
    report = (out / "report.md").read_text()
    assert "Differential privacy of the whole model" in report and "per-feature sums;" not in report
    assert "Measured accuracy" in report and "(unit: one image)" in report
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {e["message_type"] for e in entries} == {"query.join", "query.embed", "query.dp_stats", "train.dp_step",
                                                    "evaluate.head"}
    assert sum(e["message_type"] == "train.dp_step" for e in entries) == 3 * 12
    for e in entries:
        if e["message_type"] == "query.embed":
            assert e["records"]["sums"]["keys"] == {}  # no per-feature sums
        if e["message_type"] == "evaluate.head":
            assert set(e["records"]["metrics"]["keys"]) <= {"confusion", "n", "correct", "suppressed", "class-total",
                                                            "pred-total", "dp-epsilon", "dp-delta"}
    for site in m["sites"].values():
        assert site["withheld_cells"] == 16  # every cell withheld at every site


@pytest.mark.integration
def test_whole_model_dp_through_secure_aggregation_sends_only_masked_sums(tmp_path: Path) -> None:
    """Distributed DP: each site adds its share of the noise and its sums leave masked; the server sees their sum."""
    import os

    from xincept.common.synthetic import write_image_folder
    from xincept.server.simulate import run_simulated_federation

    data = write_image_folder(tmp_path / "data", per_class=24, size=64)
    audit = tmp_path / "audit.jsonl"
    os.environ["XINCEPT_AUDIT_LOG"] = str(audit)
    try:
        settings = FedSettings(out_dir=str(tmp_path / "out"), dp_mode="whole-model", dp_epsilon=4.0, dp_steps=4,
                               secure_aggregation=True, backbones="test_resnet,test_efficientnet", input_size=80,
                               pretrained=False, group_block=2, min_cell_count=2)
        m = run_simulated_federation(data, 3, "iid", settings, cache_dir=tmp_path / "cache", reference=False)
    finally:
        del os.environ["XINCEPT_AUDIT_LOG"]
    sa = m["secure_aggregation"]
    assert sa["rounds"] == 1 + 4 and sa["rounds_with_dropouts"] == 0 and set(sa["bytes_up_per_site"]) == set(m["privacy"])
    assert all(0 < p["epsilon"] <= 4.0 for p in m["privacy"].values()) and "distributed DP" in m["whole_model_dp"]["noise"]
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    dp = [e for e in entries if e["message_type"] in ("query.dp_stats", "train.dp_step")]
    assert len(dp) == 3 * 5
    for e in dp:  # nothing but a masked uint32 vector and the spent budget
        assert set(e["records"]) == {"masked", "metrics"}
        assert e["records"]["masked"]["keys"]["update"]["dtype"] == "uint32"
    assert 0.0 <= m["global"]["accuracy"] <= 1.0  # from noisy counts of ~20 test images: no bound worth asserting


def test_a_site_can_require_whole_model_dp() -> None:
    from xincept.client.guard import _check_privacy
    from xincept.client.policy import PolicyViolation, SitePolicy

    strict = SitePolicy(require_whole_model_dp=True)
    with pytest.raises(PolicyViolation, match="require-whole-model-dp"):
        _check_privacy(strict, FedSettings(dp_epsilon=3.0), "train.head")  # DP-SGD on the head alone is not enough
    _check_privacy(strict, FedSettings(dp_mode="whole-model", dp_epsilon=3.0), "train.dp_step")


@pytest.mark.parametrize("epsilon", [1.0, 3.0, 8.0])
def test_the_plan_spends_the_budget_by_opacus_accountant_too(epsilon: float) -> None:
    """Every release of the plan is a full-batch Gaussian mechanism; Opacus' PRV accountant composes them numerically,
    independently of our closed form, and finds the same epsilon: the plan spends the budget, not more, not much less."""
    import warnings

    from opacus.accountants import PRVAccountant

    from xincept.common.dp_linear import LinearDPConfig, site_plan
    from xincept.common.privacy_accounting import epsilon_of

    cfg = LinearDPConfig()
    _, planned = site_plan(epsilon, 1e-5, cfg)
    assert [r.kind for r in planned] == ["gaussian"] * 3 and [r.count for r in planned] == [1, cfg.steps, 1]
    acc = PRVAccountant()
    acc.history = [(r.noise, 1.0, r.count) for r in planned]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        theirs = acc.get_epsilon(delta=1e-5, eps_error=0.005)
    assert epsilon_of(planned, 1e-5) == pytest.approx(theirs, abs=0.006) and theirs <= epsilon + 0.006
    assert theirs >= epsilon * 0.98  # the plan spends the budget, not much less
