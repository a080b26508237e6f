"""One federated configuration on real data, through `xincept-server simulate` (Flower's simulation engine).

Prints one JSON object: accuracy with its Wilson interval, the centralized reference on the same
splits (head softmax and XGBoost), per-site and cross-site accuracy, DP budgets, bytes, phase times,
total wall time and the peak memory of the whole process tree (server, Ray and site actors).

    python bench/federation.py --name dirichlet --data ../shared/datasets/all4 --sites 4 \\
        --partition dirichlet:0.5 [--cache-dir DIR] [--folds 5] [--weights-dir W] [-- extra simulate options]

Random backbone weights (--no-pretrained) unless ``--weights-dir W`` names staged ImageNet weights (from
`xincept-client stage-weights`); a backbone without a staged file in W then stays random, labelled (--random-backbones).

With ``--folds 5`` the configuration runs once per test fold (``simulate --test-fold 0..4``): every site's
images are tested once, a grouped 5-fold cross-validation. The JSON then holds each fold's summary and
``cv``: accuracy pooled over all folds' images with its Wilson interval, the mean and spread of the fold
accuracies, and the same for the centralized reference trained on each fold's pooled training splits.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _proc import run_measured  # noqa: E402
from xincept.common.strict_json import dumps as strict_dumps  # noqa: E402


def summarize(name: str, metrics: dict, measured: dict, args: argparse.Namespace, extra: list[str]) -> dict:
    g = metrics["global"]
    ref = metrics.get("centralized_reference", {})
    return {
        "name": name,
        "command": " ".join(["xincept-server", "simulate", "--data", str(args.data), "--sites", str(args.sites),
                             "--partition", args.partition, *weights_options(args, extra), *extra]).replace(str(args.weights_dir), "W"),
        "weights": metrics["weights"], "backbone_weights": metrics.get("backbone_weights"),
        "backbones": metrics["settings"]["backbones"], "input_size": metrics["settings"]["input-size"], "seed": metrics["settings"]["seed"],
        "protocol": metrics["protocol"]["description"], "classifier": metrics["classifier"],
        "strategy": metrics["settings"]["strategy"], "head_members": metrics.get("head_members", 1),
        "partition": metrics["partition"],
        "accuracy": g["accuracy"], "accuracy_ci95": g["ci95"]["accuracy"], "n_test": g["n"], "macro_f1": g["macro_f1"],
        "auc_ovr": g.get("auc_ovr"),
        "head_softmax_accuracy": metrics["head_softmax"]["global"]["accuracy"],
        "selected_round": metrics.get("selected_round"),
        "centralized_reference": {k: {"accuracy": v["accuracy"], "ci95": v["ci95"]["accuracy"],
                                      **({"classifier": v["classifier"]} if "classifier" in v else {})}
                                  for k, v in ref.items() if isinstance(v, dict) and "accuracy" in v},
        "sites": {s: {"accuracy": v["accuracy"], "n": v["n"]} for s, v in metrics["sites"].items()},
        "cross_site": {s: {k: v["accuracy"] for k, v in row.items()} for s, row in metrics.get("cross_site", {}).items()},
        "privacy": metrics.get("privacy", {}),
        "xgb": metrics["xgb"], "classifier_chosen": metrics["xgb"].get("selection", {}).get("chosen"),
        "communication": metrics["communication"],
        "timing_s": metrics["timing_s"],
        "seconds_per_round": round(metrics["timing_s"]["head_rounds"] / max(len(metrics["rounds"]), 1), 2),
        **measured,
    }


def _pooled(accs: list[float], ns: list[int]) -> dict:
    from xincept.common.metrics import wilson_interval

    correct = int(round(sum(a * n for a, n in zip(accs, ns))))
    return {"accuracy": correct / sum(ns), "accuracy_ci95": list(wilson_interval(correct, sum(ns))), "n": sum(ns),
            "fold_accuracy": accs, "fold_mean": statistics.fmean(accs), "fold_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0}


def cross_validated(name: str, folds: list[dict]) -> dict:
    """Pool per-fold summaries: each image is in exactly one fold's test splits."""
    ns = [f["n_test"] for f in folds]
    cv = {"folds": len(folds), "federated": _pooled([f["accuracy"] for f in folds], ns),
          "federated_head_softmax": _pooled([f["head_softmax_accuracy"] for f in folds], ns)}
    for key in ("xgboost", "head_softmax", "selected"):
        if all(key in f["centralized_reference"] for f in folds):
            cv[f"centralized_{key}"] = _pooled([f["centralized_reference"][key]["accuracy"] for f in folds], ns)
    ref = "centralized_selected" if "centralized_selected" in cv else "centralized_xgboost"
    if ref in cv:  # like with like: the centralized model chooses its classifier by the same rule as the federation
        gaps = [c - f for c, f in zip(cv[ref]["fold_accuracy"], cv["federated"]["fold_accuracy"])]
        cv["gap_points"] = {"against": ref, "pooled": 100 * (cv[ref]["accuracy"] - cv["federated"]["accuracy"]),
                            "fold": [100 * g for g in gaps]}
    first = folds[0]
    return {"name": name, "command": first["command"].replace("--test-fold 0", f"--test-fold K (K = 0..{len(folds) - 1})"), "weights": first["weights"],
            "backbone_weights": first.get("backbone_weights"), "backbones": first.get("backbones"), "input_size": first["input_size"], "seed": first["seed"],
            "protocol": (f"grouped {len(folds)}-fold cross-validation inside every site (fold K: each site tests on its K-th "
                         "grouped fold, validates on a grouped 15% of the rest, trains on the remainder); accuracy pooled over "
                         "every fold's test images (each image tested once), Wilson 95% interval over images"),
            "partition": first["partition"], "cv": cv, "strategy": first.get("strategy"),
            "classifier_chosen": [f.get("classifier_chosen") for f in folds], "accuracy": cv["federated"]["accuracy"],
            "accuracy_ci95": cv["federated"]["accuracy_ci95"], "n_test": cv["federated"]["n"],
            "communication": first["communication"], "xgb_mode": first["xgb"].get("mode"),
            "privacy": {f"fold {i}": f["privacy"] for i, f in enumerate(folds) if f["privacy"]},
            "wall_s": round(sum(f["wall_s"] for f in folds), 1), "peak_rss_mb": max(f["peak_rss_mb"] for f in folds),
            "fold_runs": folds}


def weights_options(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """--no-pretrained, or the staged weights with every backbone W lacks named random."""
    if args.weights_dir is None:
        return ["--no-pretrained"]
    backbones = extra[extra.index("--backbones") + 1] if "--backbones" in extra else "legacy_xception,inception_v3"
    staged = {p.stem for p in args.weights_dir.glob("*.safetensors")}
    random = [b for b in backbones.split(",") if b not in staged]
    return ["--weights-dir", str(args.weights_dir), *(["--random-backbones", ",".join(random)] if random else [])]


def run_one(args: argparse.Namespace, extra: list[str], out: Path) -> dict:
    exe = shutil.which("xincept-server") or "xincept-server"
    cmd = [exe, "simulate", "--data", str(args.data), "--sites", str(args.sites), "--partition", args.partition,
           *weights_options(args, extra), "--out", str(out), *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else []), *extra]
    out.parent.mkdir(parents=True, exist_ok=True)
    measured = run_measured(cmd, out.parent / f"{out.name}.log", args.timeout)
    if measured["exit_code"] != 0:
        log = out.parent / f"{out.name}.log"
        reason = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip().startswith("error:")]
        print(strict_dumps({"name": args.name, "error": (reason[-1] if reason else f"simulate exited {measured['exit_code']}"),
                          "log": str(log), **measured}))
        sys.exit(1)
    return summarize(args.name, json.loads((out / "metrics.json").read_text()), measured, args, extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/all4"))
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--partition", default="iid")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--weights-dir", type=Path, default=None, help="staged ImageNet weights (default: random weights)")
    ap.add_argument("--out", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--folds", type=int, default=1, help="run every test fold (grouped k-fold CV); 1: fold 0 only")
    args, extra = ap.parse_known_args()
    extra = [e for e in extra if e != "--"]
    out = args.out or Path(tempfile.mkdtemp(prefix=f"bench-{args.name}-"))
    if args.folds <= 1:
        print(strict_dumps(run_one(args, extra, out), indent=1))
        return
    folds = [run_one(args, [*extra, "--test-fold", str(k)], out / f"fold-{k}") for k in range(args.folds)]
    print(strict_dumps(cross_validated(args.name, folds), indent=1))


if __name__ == "__main__":
    main()
