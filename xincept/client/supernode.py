"""Start a Flower SuperNode for one hospital site, and keep it running until Ctrl-C."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from xincept.common.processes import die_with_parent, stop_tree
from xincept.common.runtime_secret import RUNNER_SECRET_ENV, write_runtime_secret

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
    classes: list[str] | None = None  # the site's class order (`join --classes`), checked against the server's


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
    if opts.classes:
        items["classes"] = ",".join(opts.classes)
    for key, path in (("state-dir", opts.state_dir), ("policy-file", opts.policy_file), ("audit-log", opts.audit_log),
                      ("privacy-ledger", opts.privacy_ledger)):
        if path:
            items[key] = str(path.resolve())
    return " ".join(f"{k}={_quote(v)}" for k, v in items.items())


def supernode_command(opts: NodeOptions, secret: Path) -> list[str]:
    """Flower's own ``flower-supernode``, started through :mod:`xincept.flower_compat` (its shorter waits, on the tested
    Flower release only).

    ``--isolation process``: Flower launches no ClientApp of its own; the site's runner (xincept.client.runner) answers
    every task with the installed code, so a server cannot make the site run code it supplies. ``secret``: the SuperNode
    hands tasks on its local API (127.0.0.1) only to requests signed with it, which only the runner holds.
    """
    cmd = [sys.executable, "-m", "xincept.flower_compat", "flower-supernode", "--superlink", opts.server,
           "--node-config", node_config(opts), "--host", "127.0.0.1", "--port", str(opts.clientapp_port),
           "--isolation", "process", "--superexec-auth-secret-file", str(secret)]
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


HEALTHY_S = 60.0  # a SuperNode that ran this long was connected: the next failure starts the backoff afresh


def start_runner(opts: NodeOptions, secret: Path, env: dict[str, str]) -> subprocess.Popen:
    """The site's runner (``xincept.client.runner``) for one SuperNode: it takes that SuperNode's tasks (signed with
    ``secret``) and stops when this process is gone, however it ended."""
    return subprocess.Popen([sys.executable, "-m", "xincept.client.runner", f"127.0.0.1:{opts.clientapp_port}",
                             str(os.getpid())], env={**env, RUNNER_SECRET_ENV: str(secret)}, start_new_session=True,
                            preexec_fn=die_with_parent)


def run_supernode(opts: NodeOptions) -> int:
    """Run Flower's SuperNode and the site's runner in the foreground until Ctrl-C or SIGTERM (then 0).

    The site keeps itself in the federation: whenever the SuperNode ends (the server is not up yet, has not
    registered this node's key yet, was restarted and no longer knows this node, or the network dropped), it is
    started again with a fresh runner, with backoff (2 s doubling to 60 s, reset after a SuperNode that ran
    ``HEALTHY_S``), until ``max_retries`` restarts or ``max_wait_time`` seconds of trying; then it exits non-zero.
    """
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}  # hospitals are offline: Flower must not try to phone home
    if opts.cache_dir:
        env["XINCEPT_CACHE_DIR"] = str(opts.cache_dir)
    if opts.threads:  # torch and XGBoost read these when they start (the site's work runs in the runner)
        env.update(OMP_NUM_THREADS=str(opts.threads), MKL_NUM_THREADS=str(opts.threads))
    signal.signal(signal.SIGTERM, _raise_interrupt)  # (SIGINT: restored for the children by the CLI, restore_interrupt)
    private = Path(tempfile.mkdtemp(prefix="xincept-join-"))  # mode 0700: this user only
    delay, tries, trying_since = 2.0, 0, time.monotonic()
    proc = runner = None
    try:
        while True:
            secret = private / f"secret-{tries}"
            secret.mkdir()
            secret = write_runtime_secret(secret)  # a fresh secret per SuperNode: only its own runner takes its tasks
            log.info("site %s: starting the SuperNode, connecting to %s", opts.site, opts.server)
            started = time.monotonic()
            proc = subprocess.Popen(supernode_command(opts, secret), env=env, start_new_session=True, preexec_fn=die_with_parent,
                                    stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace")
            runner = start_runner(opts, secret, env)
            code, refused = _stream(proc)
            stop_tree(runner, timeout=10)
            if time.monotonic() - started > HEALTHY_S:
                delay, tries, trying_since = 2.0, 0, time.monotonic()
            tries += 1
            out_of_time = opts.max_wait_time is not None and time.monotonic() - trying_since + delay > opts.max_wait_time
            out_of_tries = opts.max_retries is not None and tries > opts.max_retries
            if out_of_time or out_of_tries:
                log.error("site %s: the SuperNode ended (code %s) and the reconnection limit is reached (--max-retries %s, "
                          "--max-wait-time %s): giving up; start `xincept-client join` again once the server is reachable",
                          opts.site, code, opts.max_retries, opts.max_wait_time)
                return code or 1
            why = ("could not connect or this node was refused (is the server up, and is this node's key registered there?)"
                   if refused else f"the SuperNode ended (code {code}; the server may have restarted)")
            log.warning("site %s: %s; reconnecting to %s in %.0f s", opts.site, why, opts.server, delay)
            time.sleep(delay)
            delay = min(delay * 2, 60.0)
    except KeyboardInterrupt:
        log.info("site %s: leaving the federation (stopping the SuperNode and the runner)", opts.site)
        for p in (proc, runner):
            if p is not None:
                stop_tree(p, timeout=10)
        return 0
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
