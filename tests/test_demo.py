"""The README's first command, as a new user runs it: `xincept-server simulate --demo`, quiet and strict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_is_quiet_and_writes_strict_json_with_its_marks(tmp_path: Path) -> None:
    from xincept.common.strict_json import loads_strict

    out = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "80", "XINCEPT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("XINCEPT_NO_PROGRESS", None)  # as a user sees it (progress bars go to stderr too)
    run = subprocess.run([sys.executable, "-c", "from xincept.server.cli import main; main()", "simulate", "--demo",
                          "--out", str(out)], capture_output=True, text=True, env=env, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    assert sum("RANDOM WEIGHTS" in line for line in lines) == 1  # once per command
    assert not [line for line in lines if "Traceback" in line or "DeprecationWarning" in line or "FutureWarning" in line]
    metrics = loads_strict((out / "metrics.json").read_text())
    loads_strict((out / "model" / "model.json").read_text())
    assert "SYNTHETIC data" in run.stdout and "random" in run.stdout
    g = metrics["global"]
    for key in ("balanced_accuracy", "macro_f1", "kappa"):  # a value, or withheld with its reason; never NaN
        assert g[key] is not None or key in g.get("withheld", {}) or key in g.get("undefined", {}), key
