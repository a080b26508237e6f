"""One federated configuration on real data, through `xincept-server simulate` (Flower's simulation engine).

Prints one JSON object: accuracy with its Wilson interval, the centralized reference on the same
splits (head softmax and XGBoost), per-site and cross-site accuracy, DP budgets, bytes, phase times,
total wall time and the peak memory of the whole process tree (server, Ray and site actors).

    python bench/federation.py --name dirichlet --data ../shared/datasets/all4 --sites 4 \\
        --partition dirichlet:0.5 [--cache-dir DIR] [-- extra simulate options]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _proc import run_measured  # noqa: E402


def summarize(name: str, metrics: dict, measured: dict, args: argparse.Namespace, extra: list[str]) -> dict:
    g = metrics["global"]
    ref = metrics.get("centralized_reference", {})
    return {
        "name": name,
        "command": " ".join(["xincept-server", "simulate", "--data", str(args.data), "--sites", str(args.sites),
                             "--partition", args.partition, "--no-pretrained", *extra]),
        "weights": metrics["weights"], "input_size": metrics["settings"]["input-size"], "seed": metrics["settings"]["seed"],
        "protocol": metrics["protocol"]["description"],
        "partition": metrics["partition"],
        "accuracy": g["accuracy"], "accuracy_ci95": g["ci95"]["accuracy"], "n_test": g["n"], "macro_f1": g["macro_f1"],
        "auc_ovr": g.get("auc_ovr"),
        "head_softmax_accuracy": metrics["head_softmax"]["global"]["accuracy"],
        "selected_round": metrics.get("selected_round"),
        "centralized_reference": {k: {"accuracy": v["accuracy"], "ci95": v["ci95"]["accuracy"]}
                                  for k, v in ref.items() if isinstance(v, dict) and "accuracy" in v},
        "sites": {s: {"accuracy": v["accuracy"], "n": v["n"]} for s, v in metrics["sites"].items()},
        "cross_site": {s: {k: v["accuracy"] for k, v in row.items()} for s, row in metrics.get("cross_site", {}).items()},
        "privacy": metrics.get("privacy", {}),
        "xgb": metrics["xgb"],
        "communication": metrics["communication"],
        "timing_s": metrics["timing_s"],
        "seconds_per_round": round(metrics["timing_s"]["head_rounds"] / max(len(metrics["rounds"]), 1), 2),
        **measured,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/all4"))
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--partition", default="iid")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    ap.add_argument("--timeout", type=float, default=3600)
    args, extra = ap.parse_known_args()
    extra = [e for e in extra if e != "--"]
    out = args.out or Path(tempfile.mkdtemp(prefix=f"bench-{args.name}-"))
    exe = shutil.which("xincept-server") or "xincept-server"
    cmd = [exe, "simulate", "--data", str(args.data), "--sites", str(args.sites), "--partition", args.partition,
           "--no-pretrained", "--out", str(out), *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else []), *extra]
    measured = run_measured(cmd, out.parent / f"{out.name}.log", args.timeout)
    if measured["exit_code"] != 0:
        log = out.parent / f"{out.name}.log"
        reason = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip().startswith("error:")]
        print(json.dumps({"name": args.name, "error": (reason[-1] if reason else f"simulate exited {measured['exit_code']}"),
                          "log": str(log), **measured}))
        sys.exit(1)
    print(json.dumps(summarize(args.name, json.loads((out / "metrics.json").read_text()), measured, args, extra), indent=1))


if __name__ == "__main__":
    main()
