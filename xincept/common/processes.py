"""Stop a child process and everything it started (Flower's SuperLink/SuperNode spawn helpers)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """All descendant process ids of ``pid`` (Linux /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` and its descendants, then SIGKILL whatever is left after ``timeout``."""
    if proc is None:
        return
    tree = descendants(proc.pid)
    if proc.poll() is None:
        _signal_all([proc.pid], signal.SIGTERM)
    _signal_all(tree, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc.poll() is None or any(_alive(p) for p in tree)):
        time.sleep(0.1)
    _signal_all([p for p in tree if _alive(p)] + ([proc.pid] if proc.poll() is None else []), signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def exit_when_orphaned(grace_s: float = 5.0, poll_s: float = 0.5) -> threading.Thread:
    """End this process ``grace_s`` seconds after its parent dies (it is re-parented), from a daemon thread.

    For the ServerApp in Flower's flwr-serverapp: when the SuperExec that started it is killed with the coordinator
    (SIGKILL, a crash), Flower's own parent monitor sends it SIGINT, and its exit path then retries, without end, to
    report to the SuperLink that died with it; the process stayed, holding the run's memory, until someone killed it.
    Its checkpoints are written atomically, so exiting at once loses nothing."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        time.sleep(grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, daemon=True, name="exit-when-orphaned")
    thread.start()
    return thread


def die_with_parent() -> None:
    """``preexec_fn`` for a child that must not outlive the process that started it, however that one ends (SIGKILL
    included): Linux sends the child SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG). Elsewhere, nothing."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        except OSError:
            pass
