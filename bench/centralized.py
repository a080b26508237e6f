"""Centralized baselines on real data: grouped 5-fold CV for the fusion and for each backbone alone,
with the scikit-learn comparison (thesis Table 5.1 on our protocol).

Prints one JSON object: per variant, accuracy with its 95% group-bootstrap interval, macro F1, AUC,
XGBoost alone, the head's softmax alone, the classifier each fold chose, the --compare classifiers, wall time and peak memory.

    python bench/centralized.py [--data ../shared/datasets/all4] [--cache-dir DIR] [--folds 5]
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

VARIANTS = {"fusion": "legacy_xception,inception_v3", "xception": "legacy_xception", "inceptionv3": "inception_v3"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/all4"))
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    rows = {}
    for name in args.variants.split(","):
        out = Path(tempfile.mkdtemp(prefix=f"bench-central-{name}-"))
        cmd = [shutil.which("xincept-server") or "xincept-server", "centralized", "--data", str(args.data), "--out", str(out),
               "--no-pretrained", "--folds", str(args.folds), "--backbones", VARIANTS[name],
               *(["--compare"] if name == "fusion" else []), *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else [])]
        measured = run_measured(cmd, out / "bench.log", 7200)
        row = {"command": " ".join(["xincept-server", *cmd[1:]]).replace(str(out), "OUT"), **measured}
        if measured["exit_code"] == 0:
            m = json.loads((out / "metrics.json").read_text())
            g = m["global"]
            row.update(accuracy=g["accuracy"], ci95=g.get("ci95", {}), macro_f1=g["macro_f1"], auc_ovr=g["auc_ovr"],
                       n=g["n"], protocol=m["protocol"]["description"], weights=m.get("weights"),
                       head_softmax=m["head_softmax"]["accuracy"], xgboost=m["xgboost"]["accuracy"],
                       classifier_chosen=m["classifier_chosen"],
                       comparison={k: v["accuracy"] for k, v in m.get("comparison", {}).items()},
                       timing_s=m.get("timing_s"))
        rows[name] = row
        print(json.dumps({name: row}), file=sys.stderr)
    print(json.dumps({"folds": args.folds, "weights": "random", "input_size": 224, "seed": 0, "variants": rows}, indent=1))


if __name__ == "__main__":
    main()
