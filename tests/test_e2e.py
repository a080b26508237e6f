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


def _acquire_refused(port: int, root_cert: Path | None = None) -> bool:
    """Whether a Runtime API (a SuperNode's local one, or the SuperLink's with TLS) refuses an unsigned request for a task."""
    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    # no retry invoker: Flower's own answers a 401 by interrupting its process (as a refused SuperExec should stop)
    client = RuntimeHttpClient.from_server_address(server_address=f"127.0.0.1:{port}", insecure=root_cert is None,
                                                   root_certificates=root_cert.read_bytes() if root_cert else None,
                                                   interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")])
    try:
        client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value], agentapp_fab_hashes=[]))
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code == 401
    finally:
        client.close()
    return False


def test_three_hospitals_train_over_tls_and_an_unregistered_node_is_refused(tmp_path: Path) -> None:
    from xincept.common.synthetic import write_image_folder

    keys = subprocess.run(_cli("xincept-server") + ["keys", "--out", str(tmp_path / "tls"), "--site", "hospital-0", "--site", "hospital-1",
                                                   "--site", "hospital-2"], env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert keys.returncode == 0, keys.stdout + keys.stderr
    tls = {"ca": tmp_path / "tls" / "ca.crt"}
    from xincept.common.tls import make_node_keys

    intruder_key = make_node_keys(tmp_path / "intruder", ["intruder"])["intruder"]  # a valid key pair, never registered
    cfg = tmp_path / "fed.toml"
    cfg.write_text("group-block = 2\nlocal-epochs = 1\nhead-members = 1\n")  # each message starts a ClientApp process
    port = free_port()
    out = tmp_path / "out"
    env = _env(tmp_path)
    server = subprocess.Popen(_cli("xincept-server") + ["start", "--out", str(out), "--tls-dir", str(tmp_path / "tls"), "--min-sites", "3",
                                                      "--rounds", "2", "--join-timeout", "180", "--port", str(port), "--config", str(cfg),
                                                      "--auth-keys", str(tmp_path / "tls" / "nodes"), *TINY],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    from xincept.server.superlink import wait_port

    wait_port("127.0.0.1", port, 120, server)
    assert _acquire_refused(port, tls["ca"])  # nobody else can take the run's ServerApp task on the hospitals' port
    clients = []
    runtime_ports = {name: free_port() for name in ["hospital-0", "hospital-1", "hospital-2", "intruder"]}
    intruder_log = tmp_path / "intruder.log"  # every join's output: tmp_path/NAME.log
    try:
        for i, name in enumerate(["hospital-0", "hospital-1", "hospital-2", "intruder"]):
            data = write_image_folder(tmp_path / f"data{i}", per_class=14, size=64, seed=i)
            key = intruder_key if name == "intruder" else tmp_path / "tls" / "nodes" / f"{name}.key"
            sink = (tmp_path / f"{name}.log").open("w")
            clients.append(subprocess.Popen(
                _cli("xincept-client") + ["join", "--site", name, "--data", str(data), "--server", f"127.0.0.1:{port}",
                                          "--root-cert", str(tls["ca"]), "--auth-key", str(key), "--cache-dir", str(tmp_path / f"cache{i}"),
                                          "--state-dir", str(tmp_path / f"state{i}"),
                                          *([] if name == "intruder" else ["--tls-dir", str(tmp_path / "tls" / "sites" / name)]),
                                          "--clientapp-port", str(runtime_ports[name])],
                env=env, stdout=sink, stderr=subprocess.STDOUT))
        output, _ = server.communicate(timeout=600)
        assert server.returncode == 0, output[-3000:]
        # another local process cannot take a task from a site's SuperNode: its Runtime API wants the site's secret
        for name in ("hospital-0", "hospital-2"):
            assert _acquire_refused(runtime_ports[name]), name
    finally:
        for p in [server, *clients]:
            stop_tree(p)
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["sites"]) == ["hospital-0", "hospital-1", "hospital-2"]  # the intruder never joined
    # each site answered from its own runner beside Flower's stock SuperNode
    assert "site runner: answering ClientApp tasks" in (tmp_path / "hospital-0.log").read_text()
    refusal = intruder_log.read_text().lower()
    assert any(word in refusal for word in ("failed to activate supernode", "unauthenticated", "not registered", "refused")), refusal[-2000:]
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert set(metrics["cross_site"]["hospital-0"]) == {"global", "local-only"}
    assert metrics["communication"]["bytes_per_site_per_round"] <= 1.2e6
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["weights"] == "random" and meta["classes"] == ["Benign", "Early", "Pre", "Pro"]
    assert (out / "model" / "head.safetensors").is_file() and (out / "report.md").is_file()
    assert json.loads((out / "status.json").read_text())["state"] == "finished"


def test_server_gives_up_when_too_few_sites_join(tmp_path: Path) -> None:
    """Flower's stock SuperLink, SuperExec and flwr-serverapp: the ServerApp's failure reaches `start`'s exit status."""
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
