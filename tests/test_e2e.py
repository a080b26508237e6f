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
        return exc.response.status_code in (401, 404)  # 401: the API wants the secret; 404: the port serves no Runtime API
    finally:
        client.close()
    return False


def _runners_of(join_pids: list[int]) -> list[str]:
    """Live site runners started by these `xincept-client join` processes (the runner's last argument is its parent)."""
    return [" ".join(args) for _, args in _live_processes()
            if "xincept.client.runner" in args and any(str(pid) in args for pid in join_pids)]


def _outsider_cli(tmp: Path, port: int, ca: Path):
    """Flower's `flwr` CLI pointed at the hospitals' port with the public CA certificate (what any hospital holds)."""
    home = tmp / "outsider-flwr"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "fleet"\n\n[superlink.fleet]\naddress = "127.0.0.1:{port}"\n'
                                      f'root-certificates = "{ca}"\n')
    app = tmp / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text('[project]\nname = "evil"\nversion = "1.0.0"\n[tool.flwr.app]\npublisher = "x"\n'
                                        '[tool.flwr.app.components]\nserverapp = "evil:app"\nclientapp = "evil:app"\n'
                                        '[tool.flwr.app.config]\nout-dir = "/tmp/evil"\n')
    env = {**_env(tmp), "FLWR_HOME": str(home)}

    def run(args: list[str]) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).parent / "flwr"), *args, "fleet"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp)

    return run


def test_three_hospitals_train_over_tls_and_an_unregistered_node_is_refused(tmp_path: Path) -> None:
    """TLS, node authentication and secure aggregation (one hospital requires it); nobody on the hospitals' port
    steers the SuperLink; three 1 GB bodies change nothing."""
    from xincept.common.synthetic import write_image_folder

    keys = subprocess.run(_cli("xincept-server") + ["keys", "--out", str(tmp_path / "tls"), "--site", "hospital-0", "--site", "hospital-1",
                                                   "--site", "hospital-2"], env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert keys.returncode == 0, keys.stdout + keys.stderr
    tls = {"ca": tmp_path / "tls" / "ca.crt"}
    from xincept.common.tls import make_node_keys

    intruder_key = make_node_keys(tmp_path / "intruder", ["intruder"])["intruder"]  # a valid key pair, never registered
    cfg = tmp_path / "fed.toml"
    # the head updates go through secure aggregation (the server sees their sum only); hospital-2 requires it
    cfg.write_text("group-block = 2\nlocal-epochs = 1\nhead-members = 1\nsecure-aggregation = true\n")
    port, control_port = free_port(), free_port()
    out = tmp_path / "out"
    env = _env(tmp_path)
    server = subprocess.Popen(_cli("xincept-server") + ["start", "--out", str(out), "--tls-dir", str(tmp_path / "tls"), "--min-sites", "3",
                                                      "--rounds", "2", "--join-timeout", "180", "--port", str(port), "--config", str(cfg),
                                                      "--control-port", str(control_port),
                                                      "--auth-keys", str(tmp_path / "tls" / "nodes"), *TINY],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    from xincept.server.superlink import wait_port

    wait_port("127.0.0.1", port, 120, server)
    assert _acquire_refused(port, tls["ca"])  # nobody else can take the run's ServerApp task on the hospitals' port
    assert _acquire_refused(control_port, tls["ca"])  # nor on the SuperLink's own loopback port without start's secret
    # with only the public CA certificate, Flower's own CLI on the hospitals' port can neither register a key, nor submit,
    # list or stop a run: the port serves the Fleet API alone (the operator's start keeps working: asserted below)
    outsider = _outsider_cli(tmp_path, port, tls["ca"])
    for args in (["supernode", "register", f"{intruder_key}.pub"], ["run", str(tmp_path / "app")], ["ls"], ["stop", "1"]):
        res = outsider(args)
        assert res.returncode != 0, (args, res.stdout[-800:])
    (tmp_path / "operator").mkdir()
    operator = _outsider_cli(tmp_path / "operator", control_port, tls["ca"])  # the same CLI on the loopback port: it works
    assert operator(["ls"]).returncode == 0
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
                                          *(["--require-secure-aggregation"] if name == "hospital-2" else []),
                                          "--clientapp-port", str(runtime_ports[name])],
                env=env, stdout=sink, stderr=subprocess.STDOUT))
        rss_before = _superlink_rss_mb(server.pid)
        assert _huge_bodies(port, tls["ca"]) == [413, 413, 413]  # three 1 GB bodies while the hospitals train
        rss_growth = _superlink_rss_mb(server.pid) - rss_before
        output, _ = server.communicate(timeout=600)
        assert server.returncode == 0, output[-3000:]
        assert rss_growth < 100
        # another local process cannot take a task from a site's SuperNode: its Runtime API wants the site's secret
        for name in ("hospital-0", "hospital-2"):
            assert _acquire_refused(runtime_ports[name]), name
    finally:
        for p in [server, *clients]:
            stop_tree(p)
    deadline = time.monotonic() + 10  # no site runner outlives its join (they once waited forever at interpreter exit)
    while _runners_of([p.pid for p in clients]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _runners_of([p.pid for p in clients]) == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["sites"]) == ["hospital-0", "hospital-1", "hospital-2"]  # the intruder never joined
    # each site answered from its own runner beside Flower's stock SuperNode
    assert "site runner: answering ClientApp tasks" in (tmp_path / "hospital-0.log").read_text()
    refusal = intruder_log.read_text().lower()
    assert any(word in refusal for word in ("failed to activate supernode", "unauthenticated", "not registered", "refused")), refusal[-2000:]
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    for r in metrics["rounds"]:  # every round's update was summed by secure aggregation among the three hospitals
        assert r["secure_aggregation"]["survivors"] == ["hospital-0", "hospital-1", "hospital-2"] and r["update_norm"] == {}
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


def _start(tmp: Path, out: Path, port: int, *extra: str, tls: bool = False) -> subprocess.Popen:
    args = ["start", "--out", str(out), "--port", str(port), *TINY, *extra]
    args += ["--tls-dir", str(tmp / "tls")] if tls else ["--insecure"]
    return subprocess.Popen(_cli("xincept-server") + args, env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _live_processes() -> list[tuple[int, list[str]]]:
    """(pid, arguments) of every live, non-zombie process."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append((int(proc.name), args))
    return found


def _own_processes(pid: int, marker: str) -> list[str]:
    """Command lines of live processes that belong to a start under ``marker`` (its --out folder) or descend from ``pid``."""
    from xincept.common.processes import descendants

    below = set(descendants(pid))
    return [" ".join(args)[:200] for p, args in _live_processes() if p in below or marker in " ".join(args)
            or _cwd(p).startswith(marker)]  # Flower's flwr-serverapp runs in the SuperLink's folder under --out


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def test_sigterm_stops_every_child_of_start_and_a_second_start_works_at_once(tmp_path: Path) -> None:
    """SIGTERM to `start` (a service manager, `docker stop`) stops the SuperLink, the SuperExec, the Fleet gateway and
    `flwr run` within 10 s; the same port and folder take a new start at once."""
    port = free_port()
    out = tmp_path / "out"
    first = _start(tmp_path, out, port, "--min-sites", "2", "--join-timeout", "120")
    from xincept.server.superlink import wait_port

    wait_port("127.0.0.1", port, 120, first)
    deadline = time.monotonic() + 60  # until the run's ServerApp is up and waiting for sites
    while not any("flwr-serverapp" in c for c in _own_processes(first.pid, str(out))) and time.monotonic() < deadline:
        time.sleep(0.2)
    children = _own_processes(first.pid, str(out))
    assert any("flwr-serverapp" in c for c in children), children
    assert any("flower-superlink" in c for c in children) and any("fleet_gateway" in c for c in children), children
    first.send_signal(15)
    first.wait(timeout=15)
    deadline = time.monotonic() + 10
    while _own_processes(first.pid, str(out)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _own_processes(first.pid, str(out)) == []
    second = _start(tmp_path, out, port, "--min-sites", "2", "--join-timeout", "3")
    output, _ = second.communicate(timeout=180)
    assert second.returncode != 0 and "only 0 of the required 2 site(s) joined" in output, output[-2000:]
    assert "Public key already in use" not in output and "address already in use" not in output.lower()


def _superlink_rss_mb(start_pid: int) -> float:
    from xincept.common.processes import descendants

    pids = [p for p in descendants(start_pid) if b"flower-superlink" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return sum(int(Path(f"/proc/{p}/statm").read_text().split()[1]) * 4096 / 2**20 for p in pids)


def _connection(port: int, ca: Path | None):
    import http.client
    import ssl

    if ca is None:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=ssl.create_default_context(cafile=str(ca)))


def _huge_bodies(port: int, ca: Path | None = None, n: int = 3) -> list[int]:
    """``n`` requests declaring 1 GB bodies to the Fleet port, each sending its first 8 MB; their status codes."""
    statuses = []
    for _ in range(n):
        conn = _connection(port, ca)
        conn.putrequest("POST", "/v1/fleet/push-object")
        conn.putheader("Content-Length", str(2**30))
        conn.endheaders()
        try:
            conn.send(b"\0" * (8 * 2**20))  # the answer comes before the rest of the gigabyte
        except OSError:
            pass
        statuses.append(conn.getresponse().status)
        conn.close()
    return statuses


def test_the_fleet_port_refuses_huge_bodies_before_reading_them(tmp_path: Path) -> None:
    """1 GB bodies to the hospitals' port are refused (413 from their declared length, 411 without one) while the
    SuperLink's memory stays put; only Fleet paths reach the SuperLink. (During a federation: the TLS test above.)"""
    from xincept.server.superlink import wait_port

    port = free_port()
    out = tmp_path / "out"
    server = _start(tmp_path, out, port, "--min-sites", "2", "--join-timeout", "60")
    try:
        wait_port("127.0.0.1", port, 120, server)
        before = _superlink_rss_mb(server.pid)
        assert before > 0
        statuses = _huge_bodies(port)
        conn = _connection(port, None)
        conn.putrequest("POST", "/v1/fleet/push-object", skip_accept_encoding=True)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        statuses.append(conn.getresponse().status)
        conn.close()
        conn = _connection(port, None)
        conn.request("POST", "/v1/control/list-runs", body=b"")
        statuses.append(conn.getresponse().status)
        conn.close()
        assert statuses == [413, 413, 413, 411, 404]
        assert _superlink_rss_mb(server.pid) - before < 100
        assert server.poll() is None  # still waiting for its sites
    finally:
        stop_tree(server)


@pytest.mark.parametrize("borrowed", ["node key", "xgboost certificate"])
def test_a_key_or_certificate_of_another_site_is_refused_naming_both(tmp_path: Path, borrowed: str) -> None:
    """hospital-b's node key joining as hospital-x, or hospital-b presenting hospital-a's XGBoost certificate: refused at
    join, naming the key or certificate and the names (identities are bound by `xincept-server keys`)."""
    from xincept.common.synthetic import write_image_folder
    from xincept.server.superlink import wait_port

    keys = subprocess.run(_cli("xincept-server") + ["keys", "--out", str(tmp_path / "tls"), "--site", "hospital-a",
                                                   "--site", "hospital-b"], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert keys.returncode == 0, keys.stdout + keys.stderr
    port = free_port()
    server = _start(tmp_path, tmp_path / "out", port, "--min-sites", "2", "--join-timeout", "120", "--auth-keys",
                    str(tmp_path / "tls" / "nodes"), tls=True)
    sites = []
    try:
        wait_port("127.0.0.1", port, 120, server)
        second = ("hospital-x", "hospital-b", "hospital-b") if borrowed == "node key" else ("hospital-b", "hospital-b", "hospital-a")
        for i, (name, key, certs) in enumerate([("hospital-a", "hospital-a", "hospital-a"), second]):
            data = write_image_folder(tmp_path / f"data{i}", per_class=10, size=64, seed=i)
            sites.append(subprocess.Popen(
                _cli("xincept-client") + ["join", "--site", name, "--data", str(data), "--server", f"127.0.0.1:{port}",
                                          "--root-cert", str(tmp_path / "tls" / "ca.crt"),
                                          "--auth-key", str(tmp_path / "tls" / "nodes" / f"{key}.key"),
                                          "--tls-dir", str(tmp_path / "tls" / "sites" / certs),
                                          "--cache-dir", str(tmp_path / f"cache{i}"), "--state-dir", str(tmp_path / f"state{i}"),
                                          "--clientapp-port", str(free_port())],
                env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        output, _ = server.communicate(timeout=300)
    finally:
        for p in [server, *sites]:
            stop_tree(p)
    assert server.returncode != 0
    expected = ("the key of site 'hospital-b' (hospital-b.key.pub) but joined as 'hospital-x'" if borrowed == "node key"
                else "site 'hospital-b' presents the XGBoost certificate of site 'hospital-a'")
    assert expected in output, output[-3000:]
    assert not (tmp_path / "out" / "model").exists()


def test_a_killed_site_is_named_within_30_s_and_a_quorum_finishes_without_it(tmp_path: Path) -> None:
    """SIGKILL one of three sites mid-run: with --min-sites 2 the server names it within 30 s, the run completes with the
    two others, and metrics.json and report.md say which sites contributed to which round."""
    import os
    import signal

    from xincept.common.synthetic import write_image_folder
    from xincept.server.superlink import wait_port

    cfg = tmp_path / "fed.toml"
    cfg.write_text("group-block = 2\nlocal-epochs = 1\nhead-members = 1\n")
    port, out = free_port(), tmp_path / "out"
    server = _start(tmp_path, out, port, "--min-sites", "2", "--rounds", "8", "--join-timeout", "120", "--config", str(cfg),
                    "--xgb-mode", "none")  # insecure sites refuse XGBoost's phase (it needs mutual TLS); this test is the rounds
    sites = {}
    try:
        wait_port("127.0.0.1", port, 120, server)
        for i, name in enumerate(["hospital-0", "hospital-1", "hospital-2"]):
            data = write_image_folder(tmp_path / f"data{i}", per_class=14, size=64, seed=i)
            sites[name] = subprocess.Popen(
                _cli("xincept-client") + ["join", "--site", name, "--data", str(data), "--server", f"127.0.0.1:{port}",
                                          "--insecure", "--cache-dir", str(tmp_path / f"cache{i}"),
                                          "--state-dir", str(tmp_path / f"state{i}"), "--clientapp-port", str(free_port())],
                env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 240
        while not (out / "checkpoint").exists() and time.monotonic() < deadline:  # round 1 done
            time.sleep(0.2)
        killed_at = time.time()
        os.killpg(sites["hospital-2"].pid, signal.SIGKILL)  # the site, its SuperNode and its runner, at once
        output, _ = server.communicate(timeout=300)
    finally:
        for p in [server, *sites.values()]:
            stop_tree(p)
    assert server.returncode == 0, output[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lost_sites"] == {"hospital-2": "disconnected during train.head"}
    rounds = metrics["rounds"]
    assert rounds[0]["sites"] == ["hospital-0", "hospital-1", "hospital-2"] and rounds[-1]["sites"] == ["hospital-0", "hospital-1"]
    first_without = next(r for r in rounds if "hospital-2" not in r["sites"])
    assert first_without["ended_at"] - killed_at < 30  # named and dropped within 30 s of the kill
    assert "hospital-2" not in metrics["sites"] and "Sites lost during the run" in (out / "report.md").read_text()


def _hospitals(tmp: Path, port: int, tag: str, names: list[str]) -> list[subprocess.Popen]:
    from xincept.common.synthetic import write_image_folder

    procs = []
    for i, name in enumerate(names):
        data = tmp / f"data{i}"
        if not data.exists():
            write_image_folder(data, per_class=14, size=64, seed=i)
        procs.append(subprocess.Popen(
            _cli("xincept-client") + ["join", "--site", name, "--data", str(data), "--server", f"127.0.0.1:{port}",
                                      "--root-cert", str(tmp / "tls" / "ca.crt"), "--auth-key", str(tmp / "tls" / "nodes" / f"{name}.key"),
                                      "--tls-dir", str(tmp / "tls" / "sites" / name), "--cache-dir", str(tmp / f"cache{i}"),
                                      "--state-dir", str(tmp / f"state-{tag}{i}"), "--clientapp-port", str(free_port())],
            env=_env(tmp), stdout=(tmp / f"{tag}-{name}.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def test_a_server_killed_mid_run_resumes_and_the_untouched_sites_finish_with_the_same_bundle(tmp_path: Path) -> None:
    """SIGKILL `start` after round 2, start it again with --resume: the sites (never restarted, and their SuperNodes
    not either: the SuperLink's SQLite state kept their registrations) carry on, and the run ends with the bundle an
    uninterrupted run gives."""
    import signal

    from xincept.server.superlink import wait_port

    names = ["hospital-0", "hospital-1", "hospital-2"]
    keys = subprocess.run(_cli("xincept-server") + ["keys", "--out", str(tmp_path / "tls"), *[a for n in names for a in ("--site", n)]],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert keys.returncode == 0, keys.stdout + keys.stderr
    cfg = tmp_path / "fed.toml"
    cfg.write_text("group-block = 2\nlocal-epochs = 1\nhead-members = 1\n")
    common = ["--min-sites", "3", "--rounds", "6", "--join-timeout", "180", "--config", str(cfg), "--auth-keys",
              str(tmp_path / "tls" / "nodes")]
    bundles = {}
    for tag in ("reference", "interrupted"):
        port, out = free_port(), tmp_path / tag
        server = _start(tmp_path, out, port, *common, tls=True)
        sites = []
        try:
            wait_port("127.0.0.1", port, 120, server)
            sites = _hospitals(tmp_path, port, tag, names)
            if tag == "interrupted":
                state = out / "checkpoint" / "state.json"
                deadline = time.monotonic() + 240
                while time.monotonic() < deadline and not (state.is_file() and json.loads(state.read_text())["completed_round"] >= 2):
                    time.sleep(0.1)
                server.send_signal(signal.SIGKILL)  # the whole coordinator process at once: no clean-up of its own
                server.wait(timeout=30)
                deadline = time.monotonic() + 30  # its children follow it (they die with their parent)
                while _own_processes(server.pid, str(out)) and time.monotonic() < deadline:
                    time.sleep(0.5)
                assert _own_processes(server.pid, str(out)) == []
                server = _start(tmp_path, out, port, *common, "--resume", tls=True)
            output, _ = server.communicate(timeout=420)
            assert server.returncode == 0, output[-3000:]
            if tag == "interrupted":  # the killed start's run is stopped before the sites reconnect, not left to expire
                assert "left open by the previous start on this folder" in " ".join(output.split()), output[-3000:]  # (log lines wrap)
        finally:
            for p in [server, *sites]:
                stop_tree(p)
        bundles[tag] = {f.name: f.read_bytes() for f in sorted((out / "model").iterdir()) if f.name != "model.json"}
        if tag == "interrupted":
            for name in names:  # the SuperLink's state file kept each node's registration: no site restarted a thing
                assert (tmp_path / f"interrupted-{name}.log").read_text().count("Starting Flower SuperNode") == 1
            assert (out / "superlink" / "superlink.db").is_file()
            assert json.loads((out / "metrics.json").read_text())["rounds"][-1]["round"] == 6
    assert {"head.safetensors", "xgb.json"} <= set(bundles["reference"])
    assert bundles["interrupted"] == bundles["reference"]


def test_a_site_with_other_weights_is_refused_at_join_before_anything_is_embedded(tmp_path: Path) -> None:
    """Two sites stage one set of weights, the third another: the join names the odd site within seconds, and no site
    has embedded a single image (their caches hold no features)."""
    import timm
    import torch
    from safetensors.torch import save_file

    from xincept.common.backbones import staged_weights_file
    from xincept.common.synthetic import write_image_folder
    from xincept.server.superlink import wait_port

    for seed in (1, 2):
        torch.manual_seed(seed)
        model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
        (tmp_path / f"weights{seed}").mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(staged_weights_file(tmp_path / f"weights{seed}", "test_resnet")))
    port, out = free_port(), tmp_path / "out"
    server = subprocess.Popen(_cli("xincept-server") + ["start", "--out", str(out), "--insecure", "--port", str(port),
                                                       "--min-sites", "3", "--join-timeout", "120", "--backbones", "test_resnet",
                                                       "--input-size", "80"],
                              env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sites = []
    try:
        wait_port("127.0.0.1", port, 120, server)
        for i, name in enumerate(["hospital-a", "hospital-b", "hospital-c"]):
            data = write_image_folder(tmp_path / f"data{i}", per_class=10, size=64, seed=i)
            weights = tmp_path / ("weights2" if name == "hospital-c" else "weights1")
            sites.append(subprocess.Popen(
                _cli("xincept-client") + ["join", "--site", name, "--data", str(data), "--server", f"127.0.0.1:{port}",
                                          "--insecure", "--weights-dir", str(weights), "--cache-dir", str(tmp_path / f"cache{i}"),
                                          "--state-dir", str(tmp_path / f"state{i}"), "--clientapp-port", str(free_port())],
                env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True))
        output, _ = server.communicate(timeout=300)
    finally:
        for p in [server, *sites]:
            stop_tree(p)
    assert server.returncode != 0
    import re

    assert re.search(r"site hospital-c differs from site hospital-[ab] and the others in backbone weights", output), output[-3000:]
    features = [f for i in range(3) for f in (tmp_path / f"cache{i}").rglob("*") if f.is_file() and "backbones" not in f.parts]
    assert features == []  # refused before any image was embedded


def test_whole_model_dp_over_secure_aggregation_survives_a_site_killed_mid_run(tmp_path: Path) -> None:
    """A deployed federation (real SuperLink, SuperNodes and site runners) in whole-model DP with secure aggregation,
    one site requiring it: the sites send only masked sums and two noisy counts; a site SIGKILLed during the DP steps
    is dropped (its masks removed, or the round repeated without it) and the others finish with one epsilon each
    that their own ledgers reproduce."""
    import signal

    from xincept.common.privacy_accounting import Release, epsilon_of
    from xincept.common.synthetic import write_image_folder
    from xincept.server.superlink import wait_port

    cfg = tmp_path / "fed.toml"
    cfg.write_text("group-block = 2\n")
    port, out = free_port(), tmp_path / "out"
    server = _start(tmp_path, out, port, "--min-sites", "2", "--expect-sites", "3", "--join-timeout", "120", "--config", str(cfg), "--dp-mode",
                    "whole-model", "--dp-epsilon", "6", "--dp-steps", "12", "--secure-aggregation")
    names = ["hospital-0", "hospital-1", "hospital-2"]
    sites = {}
    try:
        wait_port("127.0.0.1", port, 120, server)
        for i, name in enumerate(names):
            data = write_image_folder(tmp_path / f"data{i}", per_class=14, size=64, seed=i)
            sites[name] = subprocess.Popen(
                _cli("xincept-client") + ["join", "--site", name, "--data", str(data), "--server", f"127.0.0.1:{port}",
                                          "--insecure", "--cache-dir", str(tmp_path / f"cache{i}"), "--state-dir",
                                          str(tmp_path / f"state{i}"), "--clientapp-port", str(free_port()),
                                          *(["--require-whole-model-dp"] if name == "hospital-1" else [])],
                env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        audit = tmp_path / "state2" / "audit.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and server.poll() is None and (
                not audit.is_file() or audit.read_text().count('"train.dp_step"') < 3):
            time.sleep(0.2)
        time.sleep(0.5)  # past the upload of that reply, most of the time; a kill mid-upload is detected too, slower
        os.killpg(sites["hospital-2"].pid, signal.SIGKILL)  # in the middle of the DP steps
        output, _ = server.communicate(timeout=420)
    finally:
        for p in [server, *sites.values()]:
            stop_tree(p)
    assert server.returncode == 0, output[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert "hospital-2" in m["lost_sites"] and m["whole_model_dp"]["sites_per_step"][-1] == 2
    assert set(m["sites"]) == {"hospital-0", "hospital-1"}
    for i, name in enumerate(names[:2]):
        p = m["privacy"][name]
        assert 0 < p["epsilon"] <= 6.0 and p["unit"] == "image"
        ledger = json.loads((tmp_path / f"state{i}" / "privacy-ledger.json").read_text())
        (run,) = next(iter(ledger["releases"].values())).values()
        assert epsilon_of([Release(**r) for r in run.values()], 1e-5) == pytest.approx(p["epsilon"], rel=1e-9)
        entries = [json.loads(line) for line in (tmp_path / f"state{i}" / "audit.jsonl").read_text().splitlines()]
        for e in entries:
            if e["message_type"] in ("query.dp_stats", "train.dp_step") and "error" not in e:
                assert set(e["records"]) == {"masked", "metrics"}  # only masked sums leave
    assert m["privacy"]["hospital-2"]["epsilon"] < m["privacy"]["hospital-0"]["epsilon"]  # it released fewer steps
