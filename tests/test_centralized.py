"""The centralized baseline end to end on generated images with tiny backbones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xincept.client.cli import app as client_app
from xincept.server.cli import app as server_app

runner = CliRunner()
TINY = ["--backbones", "test_resnet,test_efficientnet", "--input-size", "80", "--no-pretrained", "--group-block", "2"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from xincept.common.synthetic import write_image_folder

    tmp = tmp_path_factory.mktemp("central")
    data = write_image_folder(tmp / "site", per_class=12)
    cache, out = tmp / "cache", tmp / "out"
    args = ["centralized", "--data", str(data), "--out", str(out), "--folds", "3", "--cache-dir", str(cache), *TINY]
    first = runner.invoke(server_app, args)
    assert first.exit_code == 0, first.output
    second = runner.invoke(server_app, [*args, "--compare"])
    assert second.exit_code == 0, second.output
    return {"data": data, "cache": cache, "out": out, "first": first.output}


def test_bundle_metrics_and_report_are_written(trained: dict) -> None:
    out = trained["out"]
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["classes"] == ["Benign", "Early", "Pre", "Pro"]
    assert meta["weights"] == "random" and "RANDOM WEIGHTS" in meta["warning"]
    assert [b["name"] for b in meta["backbones"]] == ["test_resnet", "test_efficientnet"]
    assert all(len(b["fingerprint"]) == 64 and b["preprocessing"]["input_size"] == [3, 80, 80] for b in meta["backbones"])
    assert meta["input_size"] == 80 and meta["package_versions"]["torch"]
    assert meta["data_summary"]["n_images"] == 48 and meta["protocol"]["kind"] == "grouped-stratified-kfold"
    assert meta["embedding_path"]["dtype"] in {"float32", "bfloat16"} and meta["embedding_path"]["device"] == "cpu"
    assert (out / "model" / "head.safetensors").stat().st_size > 0
    chosen = meta["classifier_selection"]["chosen"]
    assert chosen == "xgboost" and meta["classifier"]["features"] == "branches"  # the default ships XGBoost
    assert meta["classifier"]["base_margin"] == "head-logits"  # boosting from the head's logits (--xgb-margin head)
    assert meta["classifier"]["kind"] == {"xgboost": "xgboost", "head_softmax": "head-softmax"}[chosen]
    assert (out / "model" / "xgb.json").is_file() == (chosen == "xgboost")

    from xincept.common.strict_json import loads_strict

    metrics = loads_strict((out / "metrics.json").read_text())  # strict JSON: no NaN or Infinity tokens
    loads_strict((out / "model" / "model.json").read_text())
    g = metrics["global"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "per_class", "confusion", "ci95"):
        assert key in g
    assert np.array(g["confusion"]).sum() == 48
    assert g["ci95"]["accuracy"][0] <= g["accuracy"] <= g["ci95"]["accuracy"][1]
    assert len(metrics["folds"]) == 3 and metrics["protocol"]["folds"] == 3
    assert sum(f["n_test"] for f in metrics["folds"]) == 48
    assert g["accuracy"] > 0.5  # the synthetic classes differ in stain and shape
    assert set(metrics["comparison"]) >= {"xgboost", "svm", "knn", "adaboost", "logistic_regression", "random_forest"}
    for f in metrics["folds"]:  # select-classifier xgboost (default): every fold's accuracy is XGBoost's
        assert f["classifier_chosen"] == "xgboost" and f["accuracy"] == f["xgboost"]["accuracy"]
        assert set(f["val_accuracy"]) == {"xgboost", "head_softmax"}  # both still reported beside the choice
    assert metrics["classifier_chosen"] == [f["classifier_chosen"] for f in metrics["folds"]]

    report = (out / "report.md").read_text()
    assert "RANDOM WEIGHTS" in report and "Confusion matrix" in report and "| Benign |" in report
    assert not list(out.rglob("*.tmp"))
    page = (out / "report.html").read_text()  # ROC per class and reliability from the out-of-fold predictions
    assert page.count('src="data:image/png;base64,') >= 5
    assert {"roc.png", "reliability.png", "confusion.png", "folds.png"} <= {p.name for p in (out / "plots").iterdir()}
    g = metrics["global"]
    assert set(g["roc"]) == {"Benign", "Early", "Pre", "Pro"} and all(0 <= c["auc"] <= 1 for c in g["roc"].values())
    assert sum(g["reliability"]["count"]) == g["n"]


def test_select_classifier_best_val_keeps_the_better_one_on_validation(trained: dict, tmp_path: Path) -> None:
    defaults = json.loads((trained["out"] / "metrics.json").read_text())
    assert defaults["classifier_chosen"] == ["xgboost"] * 3 and defaults["global"]["accuracy"] == defaults["xgboost"]["accuracy"]
    out = tmp_path / "out"
    res = runner.invoke(server_app, ["centralized", "--data", str(trained["data"]), "--out", str(out), "--folds", "3",
                                     "--cache-dir", str(trained["cache"]), "--select-classifier", "best-val", *TINY])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    meta = json.loads((out / "model" / "model.json").read_text())
    assert set(metrics["classifier_chosen"]) <= {"xgboost", "head_softmax"}
    val = meta["classifier_selection"]["val_accuracy"]
    chosen = meta["classifier_selection"]["chosen"]
    assert chosen == ("head_softmax" if val["head_softmax"] > val["xgboost"] else "xgboost")
    assert (out / "model" / "xgb.json").is_file() == (chosen == "xgboost")
    bad = runner.invoke(server_app, ["centralized", "--data", str(trained["data"]), "--out", str(tmp_path / "o2"),
                                     "--select-classifier", "best", *TINY])
    assert bad.exit_code == 2 and "select-classifier" in bad.output and "best-val or xgboost" in bad.output


def test_second_run_reuses_the_cache(trained: dict) -> None:
    metrics = json.loads((trained["out"] / "metrics.json").read_text())
    assert metrics["timing_s"]["images_embedded_now"] == 0


def test_predict_text_and_json(trained: dict) -> None:
    img = trained["data"] / "Pro" / "Pro-001.png"
    res = runner.invoke(client_app, ["predict", "--model", str(trained["out"] / "model"), str(img), "--format", "json",
                                     "--cache-dir", str(trained["cache"])])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["class"] in {"Benign", "Early", "Pre", "Pro"}
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert "RANDOM WEIGHTS" in rows[0]["warning"]


def test_predict_reports_a_corrupt_image_and_goes_on(trained: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    img = trained["data"] / "Benign" / "Benign-002.png"
    res = runner.invoke(client_app, ["predict", "--model", str(trained["out"] / "model"), str(bad), str(img), "--cache-dir", str(trained["cache"])])
    assert res.exit_code == 1
    assert "bad.jpg: ERROR" in res.output and "Benign-002.png:" in res.output


def test_predict_refuses_a_bundle_with_other_backbone_weights(trained: dict, tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained["out"] / "model", model)
    meta = json.loads((model / "model.json").read_text())
    meta["backbones"][0]["fingerprint"] = "0" * 64
    (model / "model.json").write_text(json.dumps(meta))
    res = runner.invoke(client_app, ["predict", "--model", str(model), str(trained["data"] / "Pre" / "Pre-001.png"), "--cache-dir", str(trained["cache"])])
    assert res.exit_code == 2 and "local weights" in res.output and "Traceback" not in res.output


def test_predict_with_incomplete_bundle(tmp_path: Path) -> None:
    res = runner.invoke(client_app, ["predict", "--model", str(tmp_path), "x.png"])
    assert res.exit_code == 2 and "incomplete" in res.output


def test_interrupted_run_leaves_no_half_written_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xincept.common.synthetic import write_image_folder
    from xincept.server import centralized

    data = write_image_folder(tmp_path / "site", per_class=6)
    calls = {"n": 0}
    real = centralized.fit_model

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(centralized, "fit_model", flaky)
    out = tmp_path / "out"
    res = runner.invoke(server_app, ["centralized", "--data", str(data), "--out", str(out), "--folds", "2", "--cache-dir", str(tmp_path / "c"), *TINY])
    assert res.exit_code == 130 and "rerun" in res.output
    assert not out.exists()
    assert len(list((tmp_path / "c").rglob("*.npy"))) == 48 and not list((tmp_path / "c").rglob("*.tmp"))


def _explain_and_check(trained: dict, image: Path, out: Path) -> dict:
    result = runner.invoke(client_app, ["explain", str(image), "--model", str(trained["out"] / "model"), "--out", str(out),
                                        "--cache-dir", str(trained["cache"])])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "explanations.json").read_text())
    assert rows[0]["class"] in rows[0]["probabilities"] and Path(rows[0]["overlay"]).is_file()
    from PIL import Image

    assert Image.open(rows[0]["overlay"]).size[0] > 300  # the panels: image, each backbone, fused
    return rows[0]


def test_explain_writes_grad_cam_overlays(trained: dict, tmp_path: Path) -> None:
    row = _explain_and_check(trained, trained["data"] / "Pre" / "Pre-001.png", tmp_path / "cam")
    assert row["heatmap_std"]["fused"] > 0.01  # a heatmap that is not constant


@pytest.mark.realdata
def test_grad_cam_on_a_real_blood_smear_is_not_constant(trained: dict, all4: Path, tmp_path: Path) -> None:
    image = sorted((all4 / "Pro").glob("*.jpg"))[0]
    row = _explain_and_check(trained, image, tmp_path / "cam")
    assert row["heatmap_std"]["fused"] > 0.01, row["heatmap_std"]
    assert all(v > 0.01 for k, v in row["heatmap_std"].items() if k not in row["no_positive_evidence"])


@pytest.mark.parametrize("command", ["predict", "check"])
def test_format_json_writes_only_json_to_a_piped_stdout(trained: dict, command: str, tmp_path: Path) -> None:
    """Every `--format json` command, run as a user would (`... --format json > out.json`): stdout is a pipe, progress
    bars are on (XINCEPT_NO_PROGRESS unset), and stdout parses as JSON with nothing stripped."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XINCEPT_NO_PROGRESS"}
    exe = str(Path(sys.executable).parent / "xincept-client")
    if command == "predict":
        images = sorted(trained["data"].rglob("*.png"))[:12]  # more than 8: predict shows a progress bar
        # an empty cache: the images are embedded now, behind a progress bar
        args = ["predict", "--model", str(trained["out"] / "model"), *map(str, images), "--cache-dir", str(tmp_path / "fresh")]
    else:
        args = ["check", "--data", str(trained["data"])]
    res = subprocess.run([exe, *args, "--format", "json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)  # the whole of stdout, as written
    assert (len(doc) == 12 if command == "predict" else doc["n_images"] == 48)


def test_mixed_weights_are_asked_for_and_named_in_every_output(tmp_path: Path) -> None:
    """One backbone staged (labelled in its file), the other random only because --random-backbones says so."""
    import timm
    import torch
    from safetensors.torch import save_file

    from xincept.common.synthetic import write_image_folder

    weights = tmp_path / "W"
    weights.mkdir()
    torch.manual_seed(7)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights / "test_resnet.safetensors"),
              metadata={"weights": "imagenet (timm)"})
    data = write_image_folder(tmp_path / "site", per_class=8)
    args = ["centralized", "--data", str(data), "--out", str(tmp_path / "out"), "--folds", "2", "--cache-dir", str(tmp_path / "c"),
            "--backbones", "test_resnet,test_efficientnet", "--input-size", "80", "--group-block", "2", "--weights-dir", str(weights)]
    refused = runner.invoke(server_app, args)  # not said: the missing file stops the run, naming it and the choices
    assert refused.exit_code == 2 and "test_efficientnet.safetensors" in refused.output and "--random-backbones" in refused.output
    res = runner.invoke(server_app, [*args, "--random-backbones", "test_efficientnet"])
    assert res.exit_code == 0, res.output
    assert "test_resnet imagenet (timm), test_efficientnet random" in res.output
    out = tmp_path / "out"
    meta = json.loads((out / "model" / "model.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    for doc in (meta, metrics):
        assert doc["weights"] == "mixed"
        assert doc["backbone_weights"] == {"test_resnet": "imagenet (timm)", "test_efficientnet": "random"}
    assert [b["weights"] for b in meta["backbones"]] == ["imagenet (timm)", "random"]
    assert "RANDOM WEIGHTS (test_efficientnet)" in meta["warning"]
    report = (out / "report.html").read_text()
    assert "imagenet (timm)" in report and "RANDOM WEIGHTS (test_efficientnet)" in report
    img = next((data / "Pre").iterdir())
    pred = runner.invoke(client_app, ["predict", "--model", str(out / "model"), str(img), "--format", "json",
                                      "--weights-dir", str(weights), "--cache-dir", str(tmp_path / "c")])
    assert pred.exit_code == 0, pred.output  # the bundle's mixed weights are rebuilt: staged + the same random one
    assert json.loads(pred.stdout)[0]["class"] in meta["classes"]


def test_predict_and_explain_give_the_same_probabilities_and_the_png_carries_the_warning(trained: dict, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    image = trained["data"] / "Early" / "Early-003.png"
    pred = runner.invoke(client_app, ["predict", "--model", str(trained["out"] / "model"), str(image), "--format", "json",
                                      "--cache-dir", str(trained["cache"])])
    assert pred.exit_code == 0, pred.output
    row = _explain_and_check(trained, image, tmp_path / "cam")
    predicted = json.loads(pred.stdout)[0]
    assert row["probabilities"] == predicted["probabilities"] and row["class"] == predicted["class"]
    top = np.asarray(Image.open(row["overlay"]).convert("RGB"))[:8]  # the random-weights banner above the panels
    assert (top[..., 0] > 150).mean() > 0.5 and (top[..., 1] < 80).mean() > 0.5
    plot = np.asarray(Image.open(next((trained["out"] / "plots").glob("*.png"))).convert("RGB"))[:8]
    assert (plot[..., 0] > 150).mean() > 0.5 and (plot[..., 1] < 80).mean() > 0.5  # every report plot carries it too
