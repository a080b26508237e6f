"""Run a command and measure its wall time and the peak resident memory of its whole process tree."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (Linux /proc), in MB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d.name))
            rss[int(d.name)] = int(fields[21]) * 4096
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 1e6


def run_measured(cmd: list[str], log: Path, timeout: float) -> dict:
    """Wall seconds, peak tree RSS (MB, sampled every 0.5 s) and exit code; output goes to ``log``."""
    peak = 0.0
    with log.open("w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss_mb(proc.pid))
                done.wait(0.5)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9
        done.set()
        thread.join()
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak, 0), "exit_code": code}
