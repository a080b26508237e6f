"""Ctrl-C during a real `xincept-server simulate`: a quick stop without traceback, a consistent checkpoint, the command
that resumes, and a folder that is never silently overwritten."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _cli() -> list[str]:
    return [sys.executable, "-c", "from xincept.server.cli import main; main()"]


def test_sigint_stops_fast_keeps_the_checkpoint_and_the_run_resumes(tmp_path: Path) -> None:
    from xincept.common.synthetic import write_image_folder
    from xincept.server.checkpoint import load_checkpoint

    data = write_image_folder(tmp_path / "data", per_class=18, size=64)
    out = tmp_path / "run"
    args = ["simulate", "--data", str(data), "--sites", "2", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--backbones", "test_resnet,test_efficientnet", "--input-size", "80", "--no-pretrained", "--group-block", "2",
            "--min-cell-count", "2", "--rounds", "60", "--local-epochs", "1", "--no-loso", "--no-reference", "--xgb-mode", "none"]
    env = {**os.environ, "XINCEPT_NO_PROGRESS": "1"}
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen([*_cli(), *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            state = out / "checkpoint" / "state.json"
            if state.is_file() and json.loads(state.read_text())["completed_round"] >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground process group
        code = proc.wait(timeout=30)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / "first.log").read_text()
    assert code == 130 and seconds < 10, (code, seconds, text[-2000:])
    assert "Traceback" not in text and "resume with:" in text and "--resume" in text.splitlines()[-1]
    ckpt = load_checkpoint(out / "checkpoint")
    assert ckpt is not None and 2 <= ckpt.completed_round < 60 and len(ckpt.rounds) == ckpt.completed_round

    again = subprocess.run([*_cli(), *args], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr and "--fresh" in again.stderr  # never a silent restart
    assert load_checkpoint(out / "checkpoint").completed_round == ckpt.completed_round

    resumed = subprocess.run([*_cli(), *args, "--resume"], capture_output=True, text=True, env=env, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, 61))  # the interrupted rounds are kept, none redone


def test_a_process_left_without_its_parent_exits_on_its_own(tmp_path: Path) -> None:
    """The ServerApp's guard (xincept.common.processes.exit_when_orphaned): a child that ignores SIGINT and SIGTERM,
    as Flower's flwr-serverapp does while it retries to reach a dead SuperLink, still ends once its parent is killed."""
    pid_file = tmp_path / "child.pid"
    child = (f"import os, signal, time; from xincept.common.processes import exit_when_orphaned; "
             f"signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             f"exit_when_orphaned(grace_s=0.2, poll_s=0.05); open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
             f"time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, "
                               f"'-c', {child!r}]); time.sleep(120)"])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
    finally:
        parent.kill()
        if pid_file.is_file() and pid_file.read_text():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
