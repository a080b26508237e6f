"""Start a Flower SuperNode for one hospital site, and keep it running until Ctrl-C."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

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


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_config(opts: NodeOptions) -> str:
    """The node config string: site facts only (hyperparameters come from the server)."""
    items = {"site": opts.site, "data-dir": str(opts.data.resolve())}
    if opts.cache_dir:
        items["cache-dir"] = str(opts.cache_dir.resolve())
    if opts.weights_dir:
        items["weights-dir"] = str(opts.weights_dir.resolve())
    if opts.manifest:
        items["manifest"] = str(opts.manifest.resolve())
    if opts.tls_dir:
        items["tls-dir"] = str(opts.tls_dir.resolve())
    return " ".join(f"{k}={_quote(v)}" for k, v in items.items())


def supernode_command(opts: NodeOptions) -> list[str]:
    cmd = [shutil.which("flower-supernode") or "flower-supernode", "--superlink", opts.server,
           "--node-config", node_config(opts), "--port", str(opts.clientapp_port)]
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


def run_supernode(opts: NodeOptions) -> int:
    """Run the SuperNode in the foreground; Ctrl-C stops it cleanly. Returns its exit code."""
    env = dict(os.environ)
    if opts.cache_dir:
        env["XINCEPT_CACHE_DIR"] = str(opts.cache_dir)
    proc = subprocess.Popen(supernode_command(opts), env=env, start_new_session=True)
    log.info("site %s: SuperNode started (pid %d), connecting to %s", opts.site, proc.pid, opts.server)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        log.info("site %s: leaving the federation (stopping the SuperNode)", opts.site)
        stop_tree(proc, timeout=15)
        return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
