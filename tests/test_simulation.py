"""A simulated federation (Flower's simulation engine) with tiny backbones on generated images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xincept.common.fedconfig import FedSettings

pytestmark = pytest.mark.integration

# min-cell-count 2: the tiny test splits (a few images a site) are below the default floor of 5, whose sites release nothing
TINY = dict(backbones="test_resnet,test_efficientnet", input_size=80, pretrained=False, group_block=2, local_epochs=1, head_members=1,
            min_cell_count=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xincept.common.synthetic import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("fed") / "data", per_class=24, size=64)


def _run(data: Path, out: Path, cache: Path, **kw):
    from xincept.server.simulate import run_simulated_federation

    settings = FedSettings(out_dir=str(out), **{**TINY, **kw})
    return run_simulated_federation(data, 3, "iid", settings, cache_dir=cache)


def test_phases_write_the_bundle_metrics_and_report(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = _run(data, out, tmp_path / "cache", rounds=2)
    assert sorted(metrics["sites"]) == ["site-0", "site-1", "site-2"]
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert set(metrics["rounds"][0]["train_loss"]) == set(metrics["sites"])
    comm = metrics["communication"]
    assert 0 < comm["bytes_per_site_per_round"] <= 1.2e6 and comm["bytes_per_site_per_round"] < comm["full_model_bytes"]
    from safetensors.torch import load_file

    head = load_file(out / "model" / "head.safetensors")
    assert {v.dtype for v in head.values()} == {torch.float32}  # fedsgd's server Adam (float64 inside) does not widen the head
    assert comm["bytes_per_site_per_round"] == sum(4 * v.numel() for v in head.values())
    g = metrics["global"]
    assert g["n"] == sum(s["n"] for s in metrics["sites"].values()) > 0
    assert g["ci95"]["accuracy"][0] <= g["accuracy"] <= g["ci95"]["accuracy"][1]
    assert metrics["centralized_reference"]["head_softmax"]["n"] == g["n"]
    assert metrics["weights"] == "random" and metrics["protocol"]["kind"] == "federated-site-holdout"
    meta = json.loads((out / "model" / "model.json").read_text())
    assert "RANDOM WEIGHTS" in meta["warning"]
    assert metrics["xgb"]["mode"] == "histogram" and metrics["xgb"]["tls"]
    assert metrics["head_softmax"]["global"]["n"] == g["n"]
    assert "selection" not in metrics["xgb"]  # select-classifier xgboost (default): XGBoost ships, as in the thesis
    assert meta["classifier"]["kind"] == "xgboost" and meta["classifier"]["features"] == "branches"
    assert meta["classifier"]["base_margin"] == "head-logits"
    assert (out / "model" / "xgb.json").is_file()
    ref = metrics["centralized_reference"]["xgboost_on_federated_embeddings"]
    assert ref["n"] == g["n"] and ref["agreement_with_federated"] > 0.9
    assert "selected" not in metrics["centralized_reference"]  # select-classifier xgboost: no validation choice to report
    assert [b["name"] for b in meta["backbones"]] == ["test_resnet", "test_efficientnet"]
    assert "Results at each site" in (out / "report.md").read_text()
    # report.html: ROC per class and reliability, pooled and per site, drawn from the released counts only
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 5
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"roc.png", "reliability.png", "roc_sites.png", "reliability_sites.png"} <= plots
    # a class's curve is drawn from its released bins only; a class with a withheld bin has none, with its reason
    assert set(g["roc"]) | set(g.get("roc_missing", {})) == {"Benign", "Early", "Pre", "Pro"} and "roc_withheld_bins" in g
    from xincept.common.strict_json import loads_strict

    for name in ("metrics.json", "model/model.json"):  # strict JSON: no NaN or Infinity tokens
        loads_strict((out / name).read_text())
    assert len(g["reliability"]["withheld"]) == len(g["reliability"]["count"])  # withheld bins are drawn as such
    site_release = next(iter(metrics["sites"].values()))
    assert "roc" in site_release and "reliability" in site_release

    from xincept.client.predict import predict_images

    rows = predict_images(out / "model", [data / "Pro" / "Pro-001.png"], tmp_path / "cache")
    assert rows[0]["class"] in meta["classes"]


def test_killed_run_resumes_to_the_same_heads_and_each_round_carries_one_head(data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from xincept.client.predict import predict_images
    from xincept.server.federation import StoppedAfterRound

    cache, full, part = tmp_path / "cache", tmp_path / "full", tmp_path / "part"
    run = dict(rounds=2, head_members=2, strategy="fedadam")  # local epochs and server Adam state both resume
    metrics = _run(data, full, cache, **run)
    assert metrics["head_members"] == 2 and len(metrics["selected_rounds"]) == 2
    assert [(r["member"], r["round"]) for r in metrics["rounds"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    head = load_file(str(full / "model" / "head.safetensors"))
    assert {k.split(".")[1] for k in head} == {"0", "1"}
    assert not torch.equal(head["members.0.classifier.weight"], head["members.1.classifier.weight"])  # own initialisation
    comm = metrics["communication"]
    assert 2 * comm["bytes_per_site_per_round"] == sum(4 * v.numel() for v in head.values())  # a round carries one head
    assert comm["rounds"] == 4 and comm["bytes_per_site_per_run"] == 2 * comm["bytes_per_site_per_round"] * 4
    meta = json.loads((full / "model" / "model.json").read_text())
    assert meta["head"]["members"] == 2 and meta["head"]["embedding_dim"] == 2 * 64  # XGBoost sees both embeddings
    assert "ensemble of 2 fused heads" in metrics["classifier"]
    assert (full / "plots" / "rounds.png").is_file()
    rows = predict_images(full / "model", [data / "Pro" / "Pro-001.png"], cache)
    assert rows[0]["class"] in meta["classes"]

    with pytest.raises(StoppedAfterRound):  # killed in the second head's first round
        _run(data, part, cache, **run, stop_after_round=3)
    assert json.loads((part / "checkpoint" / "member-1" / "state.json").read_text())["completed_round"] == 1
    assert not (part / "model").exists()
    resumed = _run(data, part, cache, **run, resume=True)
    assert [(r["member"], r["round"]) for r in resumed["rounds"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    again = load_file(str(part / "model" / "head.safetensors"))
    assert head.keys() == again.keys()
    for k in head:
        torch.testing.assert_close(head[k], again[k], rtol=1e-4, atol=1e-5)


def test_bagging_mode_and_head_only_mode(data: Path, tmp_path: Path) -> None:
    bag = _run(data, tmp_path / "bag", tmp_path / "cache", rounds=1, xgb_mode="bagging", xgb_bagging_rounds=3)
    xgb = bag["xgb"]
    assert xgb["mode"] == "bagging" and xgb["sites"] == 3 and 1 <= xgb["rounds"] <= 3
    assert len(xgb["val_loss"]) == xgb["rounds"] and 1 <= xgb["selected_round"] <= xgb["rounds"]  # pooled early stopping
    trees = json.loads((tmp_path / "bag" / "model" / "xgb.json").read_text())["learner"]["gradient_booster"]["model"]
    assert len(trees["tree_info"]) == 3 * 3 * 4  # rounds x sites x classes
    none = _run(data, tmp_path / "none", tmp_path / "cache", rounds=1, xgb_mode="none")
    assert json.loads((tmp_path / "none" / "model" / "model.json").read_text())["classifier"]["kind"] == "head-softmax"
    assert none["global"]["accuracy"] == none["head_softmax"]["global"]["accuracy"]
