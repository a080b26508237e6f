"""A simulated federation with secure aggregation: the same model as plain FedAvg within quantisation error, no site's
own update ever leaves it (the audit log shows masked uint32 vectors only), and a site that requires secure
aggregation refuses a run without it, naming the rule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from xincept.common.fedconfig import FedSettings

pytestmark = pytest.mark.integration

TINY = dict(backbones="test_resnet,test_efficientnet", input_size=80, pretrained=False, group_block=2, local_epochs=1,
            xgb_mode="none", loso=False, local_only=False, min_cell_count=2, rounds=2, select_round="last")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from xincept.common.synthetic import write_image_folder
    from xincept.server.simulate import run_simulated_federation

    tmp = tmp_path_factory.mktemp("secagg")
    data = write_image_folder(tmp / "data", per_class=24, size=64)
    out = {}
    for secure in (False, True):
        audit = tmp / f"audit-{secure}.jsonl"
        os.environ["XINCEPT_AUDIT_LOG"] = str(audit)
        try:
            settings = FedSettings(out_dir=str(tmp / f"out-{secure}"), secure_aggregation=secure, **TINY)
            metrics = run_simulated_federation(data, 3, "iid", settings, cache_dir=tmp / "cache", reference=False)
        finally:
            del os.environ["XINCEPT_AUDIT_LOG"]
        out[secure] = {"metrics": metrics, "out": tmp / f"out-{secure}",
                       "audit": [json.loads(line) for line in audit.read_text().splitlines()]}
    out["data"], out["tmp"] = data, tmp
    return out


def _head(out: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(out / "model" / "head.safetensors"))


def test_the_securely_aggregated_model_is_fedavgs_within_quantisation(runs: dict) -> None:
    plain, secure = _head(runs[False]["out"]), _head(runs[True]["out"])
    assert set(plain) == set(secure)
    worst = max(float(np.max(np.abs(plain[k].astype(np.float64) - secure[k]))) for k in plain)
    assert worst < 1e-4  # 2 rounds x 3 sites of 24-bit rounding (and float32 arithmetic)
    rounds = runs[True]["metrics"]["rounds"]
    assert [r["secure_aggregation"]["survivors"] for r in rounds] == [["site-0", "site-1", "site-2"]] * 2
    assert all(r["secure_aggregation"]["dropped"] == [] and r["secure_aggregation"]["bytes_up"] for r in rounds)
    assert runs[True]["metrics"]["secure_aggregation"]["threshold"] == 2  # a majority of 3
    assert "Secure aggregation" in (runs[True]["out"] / "report.md").read_text()


def test_no_site_update_leaves_a_site_unmasked(runs: dict) -> None:
    from xincept.client.audit import check_entry

    entries = runs[True]["audit"]
    heads = [e for e in entries if e["message_type"] == "train.head"]
    assert heads and all(set(e["records"]) <= {"masked", "metrics", "val"} for e in heads)
    assert all(e["records"]["masked"]["keys"]["update"]["dtype"] == "uint32" for e in heads)
    assert {"query.secagg_keys", "query.secagg_shares", "query.secagg_unmask"} <= {e["message_type"] for e in entries}
    assert [p for e in entries for p in check_entry(e)] == []


def test_a_site_requiring_secure_aggregation_refuses_a_plain_run(runs: dict) -> None:
    from xincept.client.policy import SitePolicy
    from xincept.server.simulate import run_simulated_federation

    tmp = runs["tmp"]
    strict = SitePolicy(require_secure_aggregation=True, min_cell_count=2)
    with pytest.raises(Exception, match="require-secure-aggregation"):
        run_simulated_federation(runs["data"], 3, "iid", FedSettings(out_dir=str(tmp / "refused"), **TINY),
                                 cache_dir=tmp / "cache", reference=False, site_policy=strict)
