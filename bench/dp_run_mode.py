"""Whole-model DP as users run it: `xincept-server simulate --dp-mode whole-model` end to end, plain and through
secure aggregation, on one fold.

Each run is the real thing (Flower's simulation engine, the sites' ClientApp, their ledgers and audit): 4 sites,
IID, test fold 0. It reports what metrics.json says: the accuracy the federation measured from the sites' noisy test
counts (and the standard deviation that noise adds), each site's epsilon over everything it released, and the
wall time (secure aggregation: four messages per step instead of one). bench/dp_end_to_end.py measures the same
protocol on all five folds, in process.

    python bench/dp_run_mode.py --data ../shared/datasets/all4 --weights-dir W --cache-dir CACHE
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xincept.common.strict_json import dumps as strict_dumps  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "all4")
    ap.add_argument("--weights-dir", type=Path, default=None, help="staged ImageNet weights (absent: random weights)")
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--backbone", default="legacy_xception")
    ap.add_argument("--epsilons", default="3,8")
    ap.add_argument("--fold", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for secure in (False, True):
        for eps in [float(e) for e in args.epsilons.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-c", "from xincept.server.cli import main; main()", "simulate", "--data", str(args.data), "--sites", "4",
                       "--partition", "iid", "--test-fold", str(args.fold), "--backbones", args.backbone,
                       "--cache-dir", str(args.cache_dir), "--dp-mode", "whole-model", "--dp-epsilon", f"{eps:g}",
                       "--secure-aggregation" if secure else "--no-secure-aggregation", "--no-reference", "--out", tmp]
                cmd += ["--weights-dir", str(args.weights_dir)] if args.weights_dir else ["--no-pretrained"]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                wall = time.perf_counter() - t0
                m = json.loads((Path(tmp) / "metrics.json").read_text())
            g, wm = m["global"], m["whole_model_dp"]
            rows.append({"epsilon": eps, "delta": m["settings"]["dp-delta"], "unit": m["settings"]["dp-unit"],
                         "secure_aggregation": secure, "fold": args.fold,
                         "weights": f"{'imagenet' if args.weights_dir else 'random'} ({args.backbone}, {m['settings']['input-size']} px)",
                         "input_size": m["settings"]["input-size"],
                         "measured_accuracy": g["accuracy"], "accuracy_noise_sd": g["dp_noise"]["accuracy_sd"],
                         "n_noisy": g["n"], "epsilon_per_site": {s: p["epsilon"] for s, p in m["privacy"].items()},
                         "noise_multiplier": wm["noise_multiplier"], "steps": wm["steps"], "noise": wm["noise"],
                         "training_s": wm["seconds"], "wall_s": round(wall, 1)})
            print(f"eps {eps:g}{' secure' if secure else ''}: {100 * g['accuracy']:.1f}% "
                  f"(+- {100 * g['dp_noise']['accuracy_sd']:.1f} from the counts' noise), training {wm['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
    print(strict_dumps({"protocol": f"xincept-server simulate, 4 sites, IID, test fold {args.fold} of 5 (grouped); accuracy "
                        "as the federation measured it from the sites' noisy test counts",
                        "command": "python bench/dp_run_mode.py --data ../shared/datasets/all4 --weights-dir W --cache-dir CACHE",
                        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
