"""End to end: a real SuperLink (TLS) and three real SuperNodes as processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xincept.common.processes import stop_tree

pytestmark = pytest.mark.e2e

TINY = ["--no-pretrained", "--backbones", "test_resnet,test_efficientnet", "--input-size", "80"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(name: str) -> list[str]:
    return [str(Path(sys.executable).parent / name)]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "XINCEPT_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "HOME": str(tmp / "home")}


def test_three_hospitals_train_over_tls(tmp_path: Path) -> None:
    from xincept.common.synthetic import write_image_folder
    from xincept.common.tls import make_certificates

    tls = make_certificates(tmp_path / "tls", ["127.0.0.1", "localhost"])
    cfg = tmp_path / "fed.toml"
    cfg.write_text("group-block = 2\nlocal-epochs = 1\n")
    port = free_port()
    out = tmp_path / "out"
    env = _env(tmp_path)
    server = subprocess.Popen(_cli("xincept-server") + ["start", "--out", str(out), "--tls-dir", str(tmp_path / "tls"), "--min-sites", "3",
                                                      "--rounds", "2", "--join-timeout", "180", "--port", str(port), "--config", str(cfg), *TINY],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    clients = []
    try:
        for i in range(3):
            data = write_image_folder(tmp_path / f"hospital{i}", per_class=10, size=64, seed=i)
            clients.append(subprocess.Popen(
                _cli("xincept-client") + ["join", "--site", f"hospital-{i}", "--data", str(data), "--server", f"127.0.0.1:{port}",
                                          "--root-cert", str(tls["ca"]), "--cache-dir", str(tmp_path / f"cache{i}"),
                                          "--clientapp-port", str(free_port())],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        output, _ = server.communicate(timeout=600)
        assert server.returncode == 0, output[-3000:]
    finally:
        for p in [server, *clients]:
            stop_tree(p)
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["sites"]) == ["hospital-0", "hospital-1", "hospital-2"]
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert metrics["communication"]["bytes_per_site_per_round"] <= 1.2e6
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["weights"] == "random" and meta["classes"] == ["Benign", "Early", "Pre", "Pro"]
    assert (out / "model" / "head.safetensors").is_file() and (out / "report.md").is_file()
    assert json.loads((out / "status.json").read_text())["state"] == "finished"


def test_server_gives_up_when_too_few_sites_join(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = subprocess.run(_cli("xincept-server") + ["start", "--out", str(out), "--insecure", "--min-sites", "2", "--join-timeout", "3",
                                                   "--port", str(port), *TINY],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "only 0 of the required 2 site(s) joined" in res.stderr + res.stdout
    assert time.monotonic() - t0 < 240
    assert not (out / "model").exists()
