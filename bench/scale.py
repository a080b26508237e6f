"""Scale: the same federation with 2, 4, 8, 16 and 32 simulated sites on this machine.

Prints one JSON object with, per site count, total wall time, time per round and the peak resident
memory of the whole process tree. IID partitions of the data. The classifier is the head's softmax
(`--xgb-mode none`) by default: histogram XGBoost holds every site online at once (at most 8 in one
simulation), and bagging appends K trees per site per round, so its cost grows with sites x rounds
(8 sites: over 7 minutes for the xgb phase alone); `--xgb-mode bagging` measures that.

    python bench/scale.py [--data ../shared/datasets/all4] [--sites 2,4,8,16,32] [--rounds 5]
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
from xincept.common.strict_json import dumps as strict_dumps  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/all4"))
    ap.add_argument("--sites", default="2,4,8,16,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--xgb-mode", default="none", choices=["none", "bagging"])
    ap.add_argument("--strategy", default="fedavg",
                    help="fedavg: 5 local epochs per round, a heavier round than fedsgd's single step, so a bound on its cost")
    ap.add_argument("--group-block", type=int, default=25,
                    help="grouping block; 32 sites need finer groups (5) or some sites get fewer than 5 training images")
    args = ap.parse_args()
    rows = []
    for n in [int(s) for s in args.sites.split(",")]:
        out = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-"))
        cmd = [shutil.which("xincept-server") or "xincept-server", "simulate", "--data", str(args.data), "--sites", str(n),
               "--partition", "iid", "--no-pretrained", "--rounds", str(args.rounds), "--strategy", args.strategy, "--xgb-mode", args.xgb_mode, "--no-loso",
               "--no-reference", "--group-block", str(args.group_block),
               "--out", str(out), *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else [])]
        measured = run_measured(cmd, out / "bench.log", args.timeout)
        row = {"sites": n, "group_block": args.group_block, **measured}
        if measured["exit_code"] != 0:
            errors = [ln.strip() for ln in (out / "bench.log").read_text(errors="replace").splitlines() if ln.strip().startswith("error:")]
            row["error"] = errors[-1][:300] if errors else "see log"
        if measured["exit_code"] == 0:
            m = json.loads((out / "metrics.json").read_text())
            row.update(accuracy=m["global"]["accuracy"], n_test=m["global"]["n"], timing_s=m["timing_s"],
                       seconds_per_round=round(m["timing_s"]["head_rounds"] / args.rounds, 2),
                       min_site_train_images=min(int(v) for v in (m["embedding"][s]["num-examples"] for s in m["embedding"])))
        rows.append(row)
        print(strict_dumps(row), file=sys.stderr)
    print(strict_dumps({"rounds": args.rounds, "strategy": args.strategy, "partition": "iid", "xgb_mode": args.xgb_mode, "weights": "random",
                      "machine": "2 cores, 24 GB, no GPU", "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
