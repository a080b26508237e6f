"""A whole simulated run with DP-SGD, a faulty site, validation and the message audit."""

from __future__ import annotations

import json

import pytest

from xincept.common.fedconfig import FedSettings

pytestmark = pytest.mark.integration

TINY = dict(backbones="test_resnet,test_efficientnet", input_size=80, pretrained=False, group_block=2, local_epochs=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """3 sites, 2 rounds, DP-SGD (epsilon 8), leave-one-site-out, site-1 sending NaN weights, audit on."""
    import os

    from xincept.client.faults import nan_update_mod
    from xincept.common.synthetic import write_image_folder
    from xincept.server.simulate import run_simulated_federation

    tmp = tmp_path_factory.mktemp("privacy")
    data = write_image_folder(tmp / "data", per_class=24, size=64)
    audit = tmp / "audit.jsonl"
    os.environ["XINCEPT_AUDIT_LOG"] = str(audit)
    try:
        # min-cell-count 2: the tiny test splits (about 20 images a site) would otherwise withhold every histogram bin
        settings = FedSettings(out_dir=str(tmp / "out"), rounds=2, dp_epsilon=8.0, loso=True, central_dp_noise=0.1,
                               min_cell_count=2, **TINY)
        metrics = run_simulated_federation(data, 3, "iid", settings, cache_dir=tmp / "cache", reference=False,
                                           client_mods=[nan_update_mod("site-1")])
    finally:
        del os.environ["XINCEPT_AUDIT_LOG"]
    return {"metrics": metrics, "out": tmp / "out", "audit": [json.loads(line) for line in audit.read_text().splitlines()]}


def test_nan_update_is_rejected_and_the_rounds_complete(run: dict) -> None:
    m = run["metrics"]
    assert [r["round"] for r in m["rounds"]] == [1, 2]
    assert all(r["rejected"] == ["site-1"] for r in m["rounds"])
    assert "non-finite" in m["rejected_updates"]["site-1"][0]
    assert set(m["rounds"][0]["update_norm"]) == {"site-0", "site-2"}
    assert m["central_dp"]["noise_multiplier"] == 0.1  # Flower's server-side DP wrapper aggregated the rounds


def test_privacy_budget_is_recorded_and_never_exceeded(run: dict) -> None:
    m = run["metrics"]
    meta = json.loads((run["out"] / "model" / "model.json").read_text())
    assert set(meta["privacy"]) == {"site-0", "site-1", "site-2"} == set(m["privacy"])
    for p in meta["privacy"].values():
        assert set(p) >= {"epsilon", "delta", "noise_multiplier", "max_grad_norm", "unit"} and p["unit"] == "image"
        assert 0 < p["epsilon"] <= 8.0 and p["delta"] == 1e-5
    assert all(r["privacy"] for r in m["rounds"])  # spent budget per round
    assert meta["privacy_scope"] == m["privacy_scope"] and "head rounds" in m["privacy_scope"]
    assert "without DP noise" in m["privacy_scope"] and "--xgb-mode none" in m["privacy_scope"]  # XGBoost ran: not under DP
    assert m["privacy_scope"] in (run["out"] / "report.md").read_text()


def test_cross_site_has_global_loso_and_local_rows_and_the_report_has_plots(run: dict) -> None:
    cross = run["metrics"]["cross_site"]
    assert set(cross) == {"site-0", "site-1", "site-2"}
    for row in cross.values():
        assert set(row) == {"global", "leave-one-site-out", "local-only"}
        assert all(0 <= v["accuracy"] <= 1 and v["n"] > 0 for v in row.values())
    html = (run["out"] / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "Generalisation across hospitals" in html
    for name in ("rounds", "confusion_sites", "roc", "reliability", "cross_site", "privacy"):
        assert (run["out"] / "plots" / f"{name}.png").stat().st_size > 1000


def test_audit_every_message_a_site_sent_carries_only_allowed_records(run: dict) -> None:
    from xincept.client.audit import check_entry

    entries = run["audit"]
    kinds = {e["message_type"] for e in entries}
    assert {"query.join", "query.embed", "train.head", "train.xgb", "evaluate.head", "train.local"} <= kinds
    head_keys = set(next(e for e in entries if e["message_type"] == "train.head")["records"]["arrays"]["keys"])
    problems = [p for e in entries for p in check_entry(e, head_keys)]
    assert problems == []
    # a reply with per-image values or file names would be caught
    bad = {"message_type": "evaluate.head", "records": {"metrics": {"kind": "metrics", "keys": {"probabilities": {"len": 300}}}}}
    assert check_entry(bad)
    named = {"message_type": "query.join", "records": {"info": {"kind": "config", "keys": {"site": {"image_names": True}}}}}
    assert check_entry(named)
