"""Federated against centralized wall time, back to back in one run (the machine is shared: only the ratio counts).

Runs, on the same data and warm embedding cache:
1. `xincept-server centralized --folds 5 --compare` (grouped 5-fold CV plus the final model and the comparison zoo);
2. `xincept-server simulate --sites 4 --partition iid --no-loso --no-reference` with the federation's defaults
   (the federated model alone, as centralized trains one);
3. `xincept-server simulate --sites 4 --partition iid` as a user types it (adds leave-one-site-out models and the
   centralized reference on the same splits).

Prints one JSON object: wall seconds, peak memory of the whole process tree (RSS, and PSS, which counts a page
shared by several processes once) and the federated/centralized wall-time ratios.

    python bench/fed_vs_central.py [--data ../shared/datasets/all4] [--cache-dir DIR]

Random backbone weights (--no-pretrained), 224 px. Run once before with the same cache so that nothing is embedded.
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
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args()
    exe = shutil.which("xincept-server") or "xincept-server"
    common = ["--data", str(args.data), "--no-pretrained", *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else [])]
    runs = {
        "centralized": [exe, "centralized", *common, "--folds", "5", "--compare"],
        "federated": [exe, "simulate", *common, "--sites", "4", "--partition", "iid", "--no-loso", "--no-reference"],
        "federated_with_loso_and_reference": [exe, "simulate", *common, "--sites", "4", "--partition", "iid"],
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-fed-vs-central-"))
    rows = {}
    try:
        for name, cmd in runs.items():
            out = tmp / name
            measured = run_measured([*cmd, "--out", str(out)], tmp / f"{name}.log", 3600)
            row = {"command": " ".join(["xincept-server", *cmd[1:]]).replace(str(args.data), "DATA"), **measured}
            metrics = out / "metrics.json"
            if measured["exit_code"] == 0 and metrics.is_file():
                m = json.loads(metrics.read_text())
                row["accuracy"] = m["global"]["accuracy"]
                row["timing_s"] = m.get("timing_s")
                if "communication" in m:
                    row["rounds"] = m["communication"].get("rounds")
            rows[name] = row
            print(strict_dumps({name: row}), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    central = rows["centralized"]["wall_s"]
    result = {"weights": "random (--no-pretrained)", "input_size": 224, "sites": 4, "partition": "iid",
              "runs": rows,
              "ratio_federated_to_centralized": round(rows["federated"]["wall_s"] / central, 2),
              "ratio_with_loso_and_reference": round(rows["federated_with_loso_and_reference"]["wall_s"] / central, 2)}
    print(strict_dumps(result, indent=1))


if __name__ == "__main__":
    main()
