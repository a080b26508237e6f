"""The deployed path as a WAN sees it, against the simulation, on the same data and rounds.

Runs `xincept-server start` (Flower's stock SuperLink, SuperExec and flwr-serverapp; TLS, node authentication) and
3 `xincept-client join` sites (Flower's stock SuperNode and the site runner) as processes on 127.0.0.1 over a
subset of the real images (whole groups of 25 file numbers dealt to the sites in turn), once for each RTT: every
site reaches the SuperLink through its own userspace latency proxy (bench/latency_proxy.py: RTT/2 each way) that
also counts request turns (HTTP requests, each one round trip). Then `xincept-server simulate --partition folders`
over the same site folders with the same settings. Prints one JSON object: for each RTT, seconds per head round
and requests per site per head round (counted over the rounds after the first), per phase, wall time, peak
memory; the simulation's; and their ratios.

    python bench/deployed.py [--data ../shared/datasets/all4] [--cache-dir DIR] [--per-site 150] [--rounds 20] [--rtt-ms 0,50]
                             [--secure-aggregation]

With --secure-aggregation the deployed runs are repeated with `secure-aggregation = true` at each RTT: seconds per
head round, and bytes a site sends per round in the four messages of a secure round, beside plain FedAvg's.

Random backbone weights (--no-pretrained), 224 px, one head (head-members 1), no leave-one-site-out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _proc import _tree_memory_mb  # noqa: E402
from xincept.common.strict_json import dumps as strict_dumps  # noqa: E402

SITES = ("hospital-a", "hospital-b", "hospital-c")
# the three sites share this machine's cores, as the simulation's sites do: Ray gives each simulated site a share of
# the cores and runs it with OMP_NUM_THREADS=1, so each deployed site gets one thread too (a hospital's own
# machine would give it all its cores)
THREADS = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree_size(pids: list[int]) -> int:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                children.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    seen, todo = set(), list(pids)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += children.get(p, [])
    return len(seen)


class Sampler:
    """Peak summed RSS and peak process count of several process trees."""

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        self.procs, self.peak_mb, self.peak_pss_mb, self.peak_procs, self._done = procs, 0.0, 0.0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            live = [p.pid for p in self.procs if p.poll() is None]
            mem = [_tree_memory_mb(pid) for pid in live]
            self.peak_mb = max(self.peak_mb, sum(m[0] for m in mem))
            self.peak_pss_mb = max(self.peak_pss_mb, sum(m[1] for m in mem))
            self.peak_procs = max(self.peak_procs, _tree_size(live))
            self._done.wait(0.5)

    def stop(self) -> dict:
        self._done.set()
        self._thread.join()
        return {"peak_rss_mb": round(self.peak_mb), "peak_pss_mb": round(self.peak_pss_mb), "peak_processes": self.peak_procs}


def deal_sites(data: Path, out: Path, per_site: int, block: int = 25) -> Path:
    """Symlinked site folders out/<site>/<class>/<image>: whole groups of ``block`` file numbers, dealt in turn."""
    root = out / "sites"
    for c, class_dir in enumerate(sorted(p for p in data.iterdir() if p.is_dir())):
        files = sorted(p for p in class_dir.iterdir() if p.is_file())
        groups = [files[i:i + block] for i in range(0, len(files), block)]
        quota = per_site // 4
        taken = {s: 0 for s in SITES}
        for g, group in enumerate(groups):
            site = SITES[(g + c) % len(SITES)]
            if taken[site] >= quota:
                continue
            (root / site / class_dir.name).mkdir(parents=True, exist_ok=True)
            for f in group:
                (root / site / class_dir.name / f.name).symlink_to(f.resolve())
            taken[site] += len(group)
    return root


def run_deployed(sites: Path, out: Path, cache: Path, cfg: Path, model: list[str], rounds: int, rtt_ms: float = 0.0) -> dict:
    from latency_proxy import LatencyProxy

    exe = Path(sys.executable).parent
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "XINCEPT_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([str(exe / "xincept-server"), "keys", "--out", str(out / "tls"), *[a for s in SITES for a in ("--site", s)]],
                   env=env, check=True, capture_output=True)
    port = free_port()
    proxies = {s: LatencyProxy(("127.0.0.1", port), delay_s=rtt_ms / 2000).start() for s in SITES}
    t0 = time.perf_counter()
    server = subprocess.Popen([str(exe / "xincept-server"), "start", "--out", str(out / "fed"), "--tls-dir", str(out / "tls"),
                               "--auth-keys", str(out / "tls" / "nodes"), "--min-sites", "3", "--rounds", str(rounds),
                               "--join-timeout", "600", "--port", str(port), "--config", str(cfg), *model],
                              env=env, stdout=(out / "server.log").open("w"), stderr=subprocess.STDOUT)
    clients = [subprocess.Popen([str(exe / "xincept-client"), "join", "--site", s, "--data", str(sites / s),
                                 "--server", f"127.0.0.1:{proxies[s].port}", "--root-cert", str(out / "tls" / "ca.crt"),
                                 "--auth-key", str(out / "tls" / "nodes" / f"{s}.key"), "--tls-dir", str(out / "tls" / "sites" / s),
                                 "--cache-dir", str(cache), "--state-dir", str(out / f"state-{s}"),
                                 "--clientapp-port", str(free_port()), "--threads", str(THREADS)],
                                env=env, stdout=(out / f"{s}.log").open("w"), stderr=subprocess.STDOUT) for s in SITES]
    sampler = Sampler([server, *clients])
    try:
        code = server.wait(timeout=3600)
    finally:
        usage = sampler.stop()
        from xincept.common.processes import stop_tree

        for p in [server, *clients]:
            stop_tree(p)
        for proxy in proxies.values():
            proxy.stop()
    wall = time.perf_counter() - t0
    if code != 0:
        return {"error": f"server exited {code}; see {out / 'server.log'}", "wall_s": round(wall, 1), **usage}
    metrics = json.loads((out / "fed" / "metrics.json").read_text())
    ends = [r["ended_at"] for r in metrics["rounds"]]  # requests of rounds 2..R: the first pays one-off costs
    per_site = {s: proxies[s].turns_between(ends[0], ends[-1]) / max(len(ends) - 1, 1) for s in SITES}
    secure = [r["secure_aggregation"] for r in metrics["rounds"] if "secure_aggregation" in r]
    extra = {}
    if secure:
        up = [b for r in secure for b in r["bytes_up"].values()]
        extra = {"secure_bytes_up_per_site_per_round": round(sum(up) / len(up)),
                 "secure_round_phase_s": round(sum(r["seconds"] for r in secure) / len(secure), 3)}
    return {"rtt_ms": rtt_ms, **summary(metrics), **extra,
            "requests_per_site_per_round": round(sum(per_site.values()) / len(SITES), 1),
            "requests_per_round_by_site": {s: round(v, 1) for s, v in per_site.items()},
            "wall_s": round(wall, 1), **usage}


def run_simulated(sites: Path, out: Path, cache: Path, cfg: Path, model: list[str], rounds: int) -> dict:
    exe = Path(sys.executable).parent
    env = {**os.environ, "XINCEPT_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(exe / "xincept-server"), "simulate", "--data", str(sites), "--partition", "folders",
                             "--out", str(out / "sim"), "--rounds", str(rounds), "--config", str(cfg), "--no-loso",
                             "--no-reference", "--cache-dir", str(cache), *model],
                            env=env, stdout=(out / "sim.log").open("w"), stderr=subprocess.STDOUT)
    sampler = Sampler([proc])
    try:
        code = proc.wait(timeout=3600)
    finally:
        usage = sampler.stop()
        from xincept.common.processes import stop_tree

        stop_tree(proc)  # Ray's workers too, when the benchmark is interrupted
    wall = time.perf_counter() - t0
    if code != 0:
        return {"error": f"simulate exited {code}; see {out / 'sim.log'}", "wall_s": round(wall, 1), **usage}
    return {**summary(json.loads((out / "sim" / "metrics.json").read_text())), "wall_s": round(wall, 1), **usage}


def summary(m: dict) -> dict:
    t = m["timing_s"]
    rounds = m["communication"]["rounds"]
    later = sorted(r["seconds"] for r in m["rounds"][1:])  # the first round also pays each site's first-message costs
    return {"accuracy": m["global"]["accuracy"], "n_test": m["global"]["n"], "rounds": rounds,
            "plain_update_bytes_per_site_per_round": m["communication"]["bytes_per_site_per_round"],
            "seconds_per_head_round": round(t["head_rounds"] / rounds, 3),
            "first_round_s": m["rounds"][0]["seconds"],
            "median_later_round_s": later[len(later) // 2] if later else None,
            "phases_s": {k: t[k] for k in ("embed", "head_rounds", "xgb", "validate", "total")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/all4"))
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--per-site", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--rtt-ms", default="0,50", help="Round-trip times to measure the deployed path at, comma-separated.")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--secure-aggregation", action="store_true",
                    help="Also run the deployed path with secure aggregation at each RTT (its cost beside plain FedAvg).")
    args = ap.parse_args()
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: the finally blocks stop every server, site and Ray process
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-deployed-"))
    out.mkdir(parents=True, exist_ok=True)
    cache = args.cache_dir or Path(os.environ.get("XINCEPT_CACHE_DIR", Path.home() / ".cache" / "xincept"))
    sites = deal_sites(args.data, out, args.per_site)
    cfg = out / "fed.toml"
    cfg.write_text("head-members = 1\n")
    model = ["--no-pretrained"]
    rtts = [float(x) for x in args.rtt_ms.split(",") if x.strip()]
    deployed = {f"{r:g}": run_deployed(sites, out / f"rtt-{r:g}", cache, cfg, model, args.rounds, r) for r in rtts}
    secure = {}
    if args.secure_aggregation:
        secure_cfg = out / "fed-secure.toml"
        secure_cfg.write_text("head-members = 1\nsecure-aggregation = true\n")
        secure = {f"{r:g}": run_deployed(sites, out / f"secure-rtt-{r:g}", cache, secure_cfg, model, args.rounds, r) for r in rtts}
    simulated = run_simulated(sites, out, cache, cfg, model, args.rounds)
    result = {"weights": "random (--no-pretrained)", "input_size": 224, "sites": len(SITES), "threads_per_site": THREADS,
              "images": sum(1 for _ in sites.rglob("*.*")), "rounds": args.rounds,
              "command": f"python bench/deployed.py --data ../shared/datasets/all4 --cache-dir CACHE --per-site {args.per_site} "
                         f"--rounds {args.rounds} --rtt-ms {args.rtt_ms}",
              "path": "stock Flower: flower-superlink --isolation process (127.0.0.1, state in its SQLite file) + flower-superexec + flwr-serverapp, behind the xincept Fleet gateway; per site "
                      "flower-supernode --isolation process + the xincept runner; each site through a latency proxy",
              "protocol": "each site holds out a grouped 20% test split and a grouped 15% validation split of the rest; "
                          "accuracy over the union of the sites' test splits (a small subset: a timing run, not an accuracy claim)",
              "rtt_ms": deployed, "simulated": simulated}
    if secure:
        result["command"] += " --secure-aggregation"
        result["secure_aggregation"] = {
            "what": "the same deployed runs with secure-aggregation = true: four messages per head round (keys, shares, "
                    "masked update, unmasking); bytes_up: what a site sends per round in them, beside the plain head update",
            "rtt_ms": secure,
            "ratio_seconds_per_head_round": {r: round(d["seconds_per_head_round"] / deployed[r]["seconds_per_head_round"], 2)
                                             for r, d in secure.items() if "error" not in d and "error" not in deployed[r]}}
    if "error" not in simulated:
        result["ratio_seconds_per_head_round"] = {r: round(d["seconds_per_head_round"] / simulated["seconds_per_head_round"], 2)
                                                  for r, d in deployed.items() if "error" not in d}
    print(strict_dumps(result, indent=1))
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
