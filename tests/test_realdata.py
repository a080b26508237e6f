"""Checks on the real ALL images (../shared/datasets/all4); skipped with a message where absent."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xincept.common.data import scan_site
from xincept.common.splits import check_group_purity, grouped_kfold

pytestmark = pytest.mark.realdata


def test_scan_finds_every_listed_image_and_keeps_duplicates_together(all4: Path) -> None:
    listed = [line.split(maxsplit=1) for line in (all4 / "SHA256SUMS.txt").read_text().splitlines() if line.strip()]
    by_hash: dict[str, list[str]] = defaultdict(list)
    for digest, name in listed:
        by_hash[digest].append(name.strip())
    site = scan_site(all4, expected_classes=["Benign", "Early", "Pre", "Pro"], show_progress=False)
    assert site.report.n_images == len(listed) and not site.report.skipped
    assert len(site.report.duplicates) == sum(len(v) > 1 for v in by_hash.values())
    group_of = {r.path.relative_to(all4).as_posix(): r.group for r in site.records}
    for names in by_hash.values():
        assert len({group_of[n] for n in names}) == 1
    y = np.array([r.label for r in site.records])
    groups = [r.group for r in site.records]
    check_group_purity(grouped_kfold(y, groups, 5, seed=0), groups)


@pytest.mark.integration
def test_tiny_pipeline_on_a_real_subset(all4: Path, tmp_path: Path) -> None:
    from xincept.server.cli import app

    subset = tmp_path / "subset"
    for cls in ("Benign", "Early", "Pre", "Pro"):
        (subset / cls).mkdir(parents=True)
        for f in sorted((all4 / cls).glob("*.jpg"))[::30][:12]:
            shutil.copy(f, subset / cls / f.name)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["centralized", "--data", str(subset), "--out", str(out), "--folds", "2", "--no-pretrained",
                                   "--backbones", "test_resnet,test_efficientnet", "--input-size", "96",
                                   "--cache-dir", str(tmp_path / "cache"), "--group-block", "40"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["kind"] == "grouped-stratified-kfold" and metrics["weights"] == "random"
    assert np.array(metrics["global"]["confusion"]).sum() == len(list(subset.rglob("*.jpg"))) == 48
