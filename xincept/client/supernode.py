"""Start a Flower SuperNode for one hospital site, and keep it running until Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from xincept.client.fast_supernode import SEPARATE_RUNNER_ENV
from xincept.common.processes import stop_tree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeOptions:
    site: str
    data: Path
    server: str
    root_cert: Path | None = None
    insecure: bool = False
    auth_key: Path | None = None  # private key; the public key is expected beside it as <key>.pub
    cache_dir: Path | None = None
    weights_dir: Path | None = None
    manifest: Path | None = None
    tls_dir: Path | None = None  # ca.crt, client.pem, client.key for XGBoost's mutual TLS
    clientapp_port: int = 9094
    max_retries: int | None = None
    max_wait_time: float | None = None
    state_dir: Path | None = None  # the site's split, query counts, privacy ledger and audit log
    policy_file: Path | None = None  # the resolved site policy (JSON)
    audit_log: Path | None = None
    privacy_ledger: Path | None = None  # default: state-dir/privacy-ledger.json
    threads: int | None = None  # CPU threads of the site's computations (default: torch's, one per core)
    separate_runner: bool = False  # answer tasks from a separate runner process, not inside the SuperNode process


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_config(opts: NodeOptions) -> str:
    """The node config string: site facts and the site's policy (hyperparameters come from the server, checked against it)."""
    items = {"site": opts.site, "data-dir": str(opts.data.resolve())}
    if opts.cache_dir:
        items["cache-dir"] = str(opts.cache_dir.resolve())
    if opts.weights_dir:
        items["weights-dir"] = str(opts.weights_dir.resolve())
    if opts.manifest:
        items["manifest"] = str(opts.manifest.resolve())
    if opts.tls_dir:
        items["tls-dir"] = str(opts.tls_dir.resolve())
    for key, path in (("state-dir", opts.state_dir), ("policy-file", opts.policy_file), ("audit-log", opts.audit_log),
                      ("privacy-ledger", opts.privacy_ledger)):
        if path:
            items[key] = str(path.resolve())
    return " ".join(f"{k}={_quote(v)}" for k, v in items.items())


def supernode_command(opts: NodeOptions) -> list[str]:
    # --isolation process: Flower launches no ClientApp of its own; the SuperNode process answers every task with the
    # installed code (xincept.client.in_supernode; or the separate runner, xincept.client.runner), so a server cannot
    # make the site run code it supplies
    # xincept.client.fast_supernode: Flower's SuperNode, polling quickly while a run is active (it sleeps 3 s otherwise)
    cmd = [sys.executable, "-m", "xincept.client.fast_supernode", "--superlink", opts.server,
           "--node-config", node_config(opts), "--host", "127.0.0.1", "--port", str(opts.clientapp_port),
           "--isolation", "process"]
    if opts.insecure:
        cmd.append("--insecure")
    elif opts.root_cert is not None:
        cmd += ["--root-certificates", str(opts.root_cert)]
    if opts.auth_key is not None:
        cmd += ["--auth-supernode-private-key", str(opts.auth_key), "--auth-supernode-public-key", f"{opts.auth_key}.pub"]
    if opts.max_retries is not None:
        cmd += ["--max-retries", str(opts.max_retries)]
    if opts.max_wait_time is not None:
        cmd += ["--max-wait-time", str(opts.max_wait_time)]
    return cmd


CONNECTION_FAILED = ("Exit Code: 305", "Failed to activate SuperNode")  # printed by flower-supernode (its exit status varies)


def _stream(proc: subprocess.Popen) -> tuple[int, bool]:
    """Echo the SuperNode's output to stderr until it exits; return its code and whether it reported a failed connection.

    The wait is on the SuperNode itself (its helper processes inherit the pipe and may outlive it); a
    SuperNode that reported a failed connection but does not exit within 15 s is killed. Its process
    group is stopped afterwards.
    """
    failed_at: list[float] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            if not failed_at and any(marker in line for marker in CONNECTION_FAILED):
                failed_at.append(time.monotonic())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while True:
        try:
            code = proc.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            if failed_at and time.monotonic() - failed_at[0] > 15:
                _kill_group(proc.pid, signal.SIGKILL)
    _kill_group(proc.pid, signal.SIGTERM)  # helpers left in the SuperNode's process group (start_new_session)
    reader.join(timeout=5)
    return code, bool(failed_at)  # seen anywhere in the output: a long traceback after it must not hide it


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_supernode(opts: NodeOptions) -> int:
    """Run the SuperNode in the foreground; Ctrl-C stops it cleanly. Returns its exit code.

    Flower's SuperNode gives up quickly when the server is not up yet or has not registered this node's
    key yet; the site keeps trying with backoff (up to 60 s between tries) until ``max_wait_time``
    (default: unlimited), so a hospital can start before the coordinator.
    """
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}  # hospitals are offline: Flower must not try to phone home
    if opts.cache_dir:
        env["XINCEPT_CACHE_DIR"] = str(opts.cache_dir)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    start, delay, tries = time.monotonic(), 2.0, 0
    proc = None
    if opts.threads:  # torch and XGBoost read these when they start (the site's work runs in the SuperNode's process tree)
        env.update(OMP_NUM_THREADS=str(opts.threads), MKL_NUM_THREADS=str(opts.threads))
    if opts.separate_runner:
        env[SEPARATE_RUNNER_ENV] = "1"
    try:
        while True:
            log.info("site %s: starting the SuperNode, connecting to %s", opts.site, opts.server)
            proc = subprocess.Popen(supernode_command(opts), env=env, start_new_session=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace")
            code, refused = _stream(proc)
            tries += 1
            waited = time.monotonic() - start
            out_of_time = opts.max_wait_time is not None and waited + delay > opts.max_wait_time
            out_of_tries = opts.max_retries is not None and tries > opts.max_retries
            if not refused or out_of_time or out_of_tries:
                return code
            log.warning("site %s: could not connect to %s or this node was refused (is the server up, and is this node's "
                        "key registered there?); trying again in %.0f s", opts.site, opts.server, delay)
            time.sleep(delay)
            delay = min(delay * 2, 60.0)
    except KeyboardInterrupt:
        log.info("site %s: leaving the federation (stopping the SuperNode)", opts.site)
        if proc is not None:
            stop_tree(proc, timeout=15)
        return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
