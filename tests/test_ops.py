"""Operations: staged weights verified at a site, site reconnection, options vs --config."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from xincept.common.errors import WeightsError


def test_verify_weights_accepts_a_staged_folder_and_names_a_damaged_file(tmp_path: Path) -> None:
    from xincept.common.weights_staging import verify_staged_weights

    names = ("legacy_xception", "inception_v3")
    lines = []
    for name in names:
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(name.encode() * 100)
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    (tmp_path / "SHA256SUMS.txt").write_text("".join(lines))
    assert set(verify_staged_weights(tmp_path, names)) == {f"{n}.safetensors" for n in names}
    (tmp_path / "inception_v3.safetensors").write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="inception_v3.safetensors does not match SHA256SUMS.txt"):
        verify_staged_weights(tmp_path, names)
    (tmp_path / "SHA256SUMS.txt").unlink()
    with pytest.raises(WeightsError, match="stage-weights"):
        verify_staged_weights(tmp_path, names)


def test_a_refused_site_retries_with_backoff_then_gives_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xincept.client import supernode

    calls = tmp_path / "calls"
    script = (f"open({str(calls)!r}, 'a').write('x'); print('ERROR : Exit Code: 305'); "
              "[print('  traceback line', i) for i in range(200)]; raise SystemExit(1)")  # a long traceback follows the marker
    fake = [sys.executable, "-c", script]
    monkeypatch.setattr(supernode, "supernode_command", lambda opts, secret: fake)
    monkeypatch.setattr(supernode, "start_runner", lambda opts, secret, env: subprocess.Popen([sys.executable, "-c", "pass"]))
    monkeypatch.setattr(supernode.time, "sleep", lambda s: None)
    opts = supernode.NodeOptions(site="a", data=tmp_path, server="127.0.0.1:1", max_retries=3)
    assert supernode.run_supernode(opts) == 1
    assert calls.read_text() == "xxxx"  # the first try and three retries


def test_a_supernode_that_ends_quietly_is_restarted_with_a_fresh_runner_and_join_never_exits_0(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's SuperNode exits 0 when a restarted server no longer knows it: the site starts it again (with a new
    secret and a new runner), and gives up only at the operator's bound, with a non-zero status."""
    from xincept.client import supernode

    secrets, runners = [], []
    monkeypatch.setattr(supernode, "supernode_command",
                        lambda opts, secret: secrets.append(secret.read_bytes()) or [sys.executable, "-c", "pass"])
    monkeypatch.setattr(supernode, "start_runner",
                        lambda opts, secret, env: runners.append(secret) or subprocess.Popen([sys.executable, "-c", "pass"]))
    monkeypatch.setattr(supernode.time, "sleep", lambda s: None)
    code = supernode.run_supernode(supernode.NodeOptions(site="a", data=tmp_path, server="127.0.0.1:1", max_retries=2))
    assert code != 0 and len(secrets) == 3 and len(runners) == 3
    assert len(set(secrets)) == 3  # a fresh secret for every SuperNode: only its own runner takes its tasks
    assert not any(p.exists() for p in runners)  # the private folder is removed when join ends


def test_options_left_at_defaults_do_not_override_a_config_file() -> None:
    from xincept.common.cli import given_options

    app = typer.Typer()
    seen = {}

    @app.command()
    def cmd(rounds: int = 20, seed: int = 0, loso: bool = True) -> None:
        seen.update(given_options(dict(rounds=rounds, seed=seed, loso=loso), always=("loso",)))

    assert CliRunner().invoke(app, ["--seed", "3"]).exit_code == 0
    assert seen == {"seed": 3, "loso": True}


def test_a_site_refuses_a_run_built_for_another_version_or_other_code() -> None:
    from xincept import __version__
    from xincept.common.errors import SettingError
    from xincept.common.versions import check_pushed_app, code_hash

    check_pushed_app(__version__, code_hash(), "site-a")  # the same release: accepted
    with pytest.raises(SettingError, match="site-a runs xincept"):
        check_pushed_app("0.0.0-other", code_hash(), "site-a")
    with pytest.raises(SettingError, match="differs from the code installed here"):
        check_pushed_app(__version__, "0" * 64, "site-a")
    with pytest.raises(SettingError, match="does not say"):
        check_pushed_app(None, None, "site-a")


def test_central_dp_wraps_the_aggregation_rule() -> None:
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedTrimmedAvg

    from xincept.common.fedconfig import FedSettings
    from xincept.server.strategies import inner, make_strategy

    s = make_strategy(FedSettings(central_dp_noise=0.5, central_dp_clip=2.0, strategy="trimmed-mean"), 4)
    assert isinstance(s, DifferentialPrivacyServerSideFixedClipping) and isinstance(inner(s), FedTrimmedAvg)
    assert s.noise_multiplier == 0.5 and s.clipping_norm == 2.0
