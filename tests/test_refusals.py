"""What cannot be learned is refused early (before any embedding or Ray start), names the setting and the fix, and
writes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xincept.client.cli import app as client_app
from xincept.common.synthetic import write_image_folder
from xincept.server.cli import app as server_app

runner = CliRunner()
TINY = ["--backbones", "test_resnet,test_efficientnet", "--input-size", "80", "--no-pretrained"]


def _timed(args: list[str], app=server_app):  # noqa: ANN001
    t0 = time.perf_counter()
    res = runner.invoke(app, args)
    return res, time.perf_counter() - t0


def test_a_single_class_is_refused_by_every_command(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "one", per_class=40, classes=("Benign",))
    out = tmp_path / "out"
    res, seconds = _timed(["centralized", "--data", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "c"), *TINY])
    assert res.exit_code == 2 and "at least two" in res.output and seconds < 10, res.output
    assert not out.exists() and not (tmp_path / "c").exists()  # refused before any embedding
    res, seconds = _timed(["simulate", "--data", str(data), "--sites", "2", "--out", str(out), "--cache-dir",
                           str(tmp_path / "c"), *TINY])
    assert res.exit_code == 2 and "at least two" in res.output and seconds < 10, res.output
    assert not out.exists()
    listed = runner.invoke(client_app, ["check", "--data", str(data)])
    assert "too few classes" in listed.output and "no problems found" not in listed.output
    assert runner.invoke(client_app, ["check", "--data", str(data), "--strict"]).exit_code == 1


def test_folds_that_a_class_cannot_fill_are_refused(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", per_class=6)
    res, seconds = _timed(["centralized", "--data", str(data), "--out", str(tmp_path / "out"), "--folds", "5",
                           "--group-block", "2", "--cache-dir", str(tmp_path / "c"), *TINY])
    assert res.exit_code == 2 and "--folds" in res.output and "4 group(s)" in res.output and seconds < 10, res.output


def test_a_partition_too_small_for_the_sites_is_refused_before_ray(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", per_class=40)  # 160 images
    out = tmp_path / "out"
    base = ["simulate", "--data", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "c"), *TINY]
    res, seconds = _timed([*base, "--sites", "4", "--partition", "dirichlet:0.5", "--group-block", "10"])
    assert res.exit_code == 2 and seconds < 10, res.output
    assert "min-cell-count" in res.output and "fewer --sites" in res.output and "site-" in res.output
    assert not out.exists()
    res, seconds = _timed([*base, "--sites", "200", "--partition", "iid"])
    assert res.exit_code == 2 and "--sites 200" in res.output and "patient groups" in res.output and "alpha" not in res.output
    assert not out.exists() and seconds < 10
    res, _ = _timed([*base, "--sites", "0"])
    assert res.exit_code == 2 and "--sites 0" in res.output and "min-sites" not in res.output


@pytest.mark.realdata
def test_check_strict_fails_on_the_real_data_set_which_has_duplicates(all4: Path) -> None:
    res = runner.invoke(client_app, ["check", "--data", str(all4), "--strict"])
    assert res.exit_code == 1 and "exact duplicates" in res.output
