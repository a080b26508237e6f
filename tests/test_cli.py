"""The CLIs: instant --help, clear errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xincept.client.cli import app as client_app
from xincept.server.cli import app as server_app

runner = CliRunner()


def test_cli_modules_do_not_import_torch() -> None:
    code = "import sys, xincept.server.cli, xincept.client.cli; print(sorted(m for m in ('torch', 'timm', 'flwr', 'xgboost') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_commands() -> None:
    assert "centralized" in runner.invoke(server_app, ["--help"]).output
    out = runner.invoke(client_app, ["--help"]).output
    assert "check" in out and "predict" in out


def test_check_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    res = runner.invoke(client_app, ["check", "--data", str(tmp_path / "missing")])
    assert res.exit_code == 2
    assert "does not exist" in res.output and "Traceback" not in res.output


def test_check_json_reports_problems_and_strict_fails(image_dir: Path) -> None:
    (image_dir / "Pre" / "broken.jpg").write_bytes(b"nope")
    res = runner.invoke(client_app, ["check", "--data", str(image_dir), "--format", "json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["counts"]["Pre"] == 10 and report["skipped"][0]["path"].endswith("broken.jpg")
    res = runner.invoke(client_app, ["check", "--data", str(image_dir), "--strict"])
    assert res.exit_code == 1 and "broken.jpg" in res.output


def test_centralized_with_bad_manifest_leaves_no_output(image_dir: Path, tmp_path: Path) -> None:
    man = tmp_path / "m.csv"
    man.write_text("filename,diagnosis\n")
    out = tmp_path / "out"
    res = runner.invoke(server_app, ["centralized", "--data", str(image_dir), "--out", str(out), "--manifest", str(man), "--no-pretrained"])
    assert res.exit_code == 2 and "expected path,label" in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_offline_without_staged_weights_names_the_expected_file(image_dir: Path, tmp_path: Path) -> None:
    wd = tmp_path / "weights"
    wd.mkdir()
    res = runner.invoke(server_app, ["centralized", "--data", str(image_dir), "--out", str(tmp_path / "o"), "--weights-dir", str(wd),
                                     "--backbones", "test_resnet,test_efficientnet", "--cache-dir", str(tmp_path / "c"),
                                     "--group-block", "1"])
    assert res.exit_code == 2
    assert "test_resnet.safetensors" in res.output and "stage-weights" in res.output


def test_every_help_fits_80_columns_and_version_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from xincept.client.cli import app as client
    from xincept.server.cli import app as server

    monkeypatch.setenv("COLUMNS", "80")
    runner = CliRunner()
    for app in (client, server):
        version = runner.invoke(app, ["--version"])
        assert version.exit_code == 0 and "xincept-all" in version.output and "flwr" in version.output
        commands = [c.name for c in app.registered_commands]
        for command in commands:
            text = runner.invoke(app, [command, "--help"], terminal_width=80).output
            assert text.startswith("Usage"), (command, text[:200])
            assert max(len(line) for line in text.splitlines()) <= 80, command
            assert "…" not in text and "\\[" not in text, command


def test_join_help_points_to_a_policy_table_that_lists_every_field() -> None:
    from xincept.client.policy import describe_fields

    guide = (Path(__file__).resolve().parents[1] / "deploy" / "README.md").read_text()
    names = [n.strip() for field, _, _ in describe_fields() for n in field.split(",")]  # "a, b" rows list several
    missing = [n for n in names if f"`{n}`" not in guide]
    assert not missing, f"deploy/README.md does not document policy field(s) {missing}"
    assert "deploy/README.md" in CliRunner().invoke(client_app, ["join", "--help"], terminal_width=80).output


def test_help_shows_the_defaults_runs_use() -> None:
    """Every federation option of simulate and start defaults to "unset" and its help prints FedSettings' own default
    (a hard-coded default once said `--local-epochs [default: 5]` while runs used 3)."""
    import re
    from dataclasses import fields

    import typer.main

    from xincept.common.fedconfig import FedSettings

    defaults = {f.name: f.default for f in fields(FedSettings)}
    command = typer.main.get_command(server_app)
    checked = set()
    for name in ("simulate", "start"):
        for param in command.commands[name].params:  # type: ignore[attr-defined]
            if param.name not in defaults or param.name in ("resume", "loso", "insecure", "public_host") or defaults[param.name] == "":
                continue  # flags, or a setting the command decides itself
            assert param.default is None, (name, param.name)
            shown = re.search(r"\[default: ([^\]]+)\]", param.help or "")
            expected = str(defaults[param.name]).lower() if isinstance(defaults[param.name], bool) else str(defaults[param.name])
            assert shown and shown.group(1) == expected, (name, param.name, param.help)
            checked.add(param.name)
    assert {"rounds", "local_epochs", "strategy", "xgb_mode", "min_sites", "join_timeout", "round_timeout", "seed"} <= checked
    out = runner.invoke(server_app, ["simulate", "--help"], terminal_width=200).output
    assert re.search(r"--local-epochs\s.*\[default: 3\]", out)


@pytest.mark.parametrize("option", ["--cache-dir", "--state-dir"])
def test_join_refuses_an_unwritable_folder_in_one_line(tmp_path: Path, option: str) -> None:
    """A read-only cache or state folder stops `join` before it starts, naming the option, the folder and the fix."""
    import os

    from xincept.common.synthetic import write_image_folder

    if os.geteuid() == 0:  # root writes anywhere: a file where the folder should be fails for root too
        locked = tmp_path / "locked"
        locked.write_text("a file, not a folder")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
    data = write_image_folder(tmp_path / "data", per_class=4, size=32)
    others = {"--cache-dir": str(tmp_path / "cache"), "--state-dir": str(tmp_path / "state")}
    others[option] = str(locked)
    res = runner.invoke(client_app, ["join", "--site", "a", "--data", str(data), "--insecure", "--max-retries", "0",
                                     *[x for k, v in others.items() for x in (k, v)]])
    assert res.exit_code == 2, res.output
    assert f"{option} {locked} cannot be written" in res.output and "Traceback" not in res.output
