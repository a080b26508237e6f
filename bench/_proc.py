"""Run a command and measure its wall time and the peak memory (RSS and PSS) of its whole process tree."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path


def _tree_pids(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _pid_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of one process. RSS counts every shared page (torch's libraries, Ray's object store) once per
    process that maps it; PSS divides each shared page among the processes sharing it, so PSS sums to the memory
    the tree really holds."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss, pss


def _tree_memory_mb(pid: int) -> tuple[float, float]:
    """Summed (RSS, PSS) of a process tree, in MB."""
    mem = [_pid_memory(p) for p in _tree_pids(pid)]
    return sum(m[0] for m in mem) / 1e6, sum(m[1] for m in mem) / 1e6


def _tree_rss_mb(pid: int) -> float:
    return _tree_memory_mb(pid)[0]


def run_measured(cmd: list[str], log: Path, timeout: float) -> dict:
    """Wall seconds, peak tree RSS (MB, sampled every 0.5 s) and exit code; output goes to ``log``."""
    peak = peak_pss = 0.0
    with log.open("w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak, peak_pss
            while not done.is_set():
                rss, pss = _tree_memory_mb(proc.pid)
                peak, peak_pss = max(peak, rss), max(peak_pss, pss)
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
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak, 0), "peak_pss_mb": round(peak_pss, 0),
            "exit_code": code}
