"""Centralized baselines on real data: grouped 5-fold CV for the fusion and for each backbone alone, with random
weights and (where staged) ImageNet weights, at 224 and 299 px, with the scikit-learn comparison (thesis Table 5.1
on our protocol).

Prints one JSON object: per variant, its backbones and the weights of each (named), input size, accuracy with its 95%
group-bootstrap interval, macro F1, AUC, XGBoost alone, the head's softmax alone, the classifier each fold chose, the
--compare classifiers, wall time and peak memory.

    python bench/centralized.py [--data ../shared/datasets/all4] [--cache-dir DIR] [--folds 5]
                                [--weights-dir W] [--variants a,b] [--merge FILE]

``--weights-dir W``: a folder from `xincept-client stage-weights` (e.g. `--from-keras` for Keras' ImageNet Xception);
the ImageNet variants run only with it. InceptionV3 stays random (labelled) while W has no inception_v3 file.
``--merge FILE``: keep FILE's other variants and replace only those run now.
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

X, I = "legacy_xception", "inception_v3"
# name: (backbones, input size, ImageNet weights?)
VARIANTS = {
    "fusion": (f"{X},{I}", 224, False), "xception": (X, 224, False), "inceptionv3": (I, 224, False),
    "imagenet_xception": (X, 224, True), "imagenet_fusion": (f"{X},{I}", 224, True),
    "imagenet_xception_299": (X, 299, True), "imagenet_fusion_299": (f"{X},{I}", 299, True),
}


def weights_options(backbones: str, imagenet: bool, weights_dir: Path | None) -> list[str]:
    if not imagenet:
        return ["--no-pretrained"]
    staged = {p.stem for p in weights_dir.glob("*.safetensors")}
    random = [b for b in backbones.split(",") if b not in staged]
    return ["--weights-dir", str(weights_dir), *(["--random-backbones", ",".join(random)] if random else [])]


def run_variant(name: str, args: argparse.Namespace) -> dict:
    backbones, size, imagenet = VARIANTS[name]
    out = Path(tempfile.mkdtemp(prefix=f"bench-central-{name}-"))
    cmd = [shutil.which("xincept-server") or "xincept-server", "centralized", "--data", str(args.data), "--out", str(out),
           *weights_options(backbones, imagenet, args.weights_dir), "--folds", str(args.folds), "--backbones", backbones,
           "--input-size", str(size), *(["--compare"] if name in ("fusion", "imagenet_fusion") else []),
           *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else [])]
    measured = run_measured(cmd, out / "bench.log", 7200)
    row = {"command": " ".join(["xincept-server", *cmd[1:]]).replace(str(out), "OUT").replace(str(args.weights_dir), "W"),
           "backbones": backbones, "input_size": size, **measured}
    if measured["exit_code"] == 0:
        m = json.loads((out / "metrics.json").read_text())
        g = m["global"]
        row.update(accuracy=g["accuracy"], ci95=g.get("ci95", {}), macro_f1=g["macro_f1"], auc_ovr=g["auc_ovr"],
                   n=g["n"], protocol=m["protocol"]["description"], weights=m.get("weights"),
                   backbone_weights=m.get("backbone_weights"),
                   head_softmax=m["head_softmax"]["accuracy"], xgboost=m["xgboost"]["accuracy"],
                   classifier_chosen=m["classifier_chosen"],
                   comparison={k: v["accuracy"] for k, v in m.get("comparison", {}).items()},
                   timing_s=m.get("timing_s"))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/all4"))
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--weights-dir", type=Path, default=None, help="staged ImageNet weights (the imagenet_* variants)")
    ap.add_argument("--variants", default=None, help=f"comma-separated, from {', '.join(VARIANTS)} (default: all that can run)")
    ap.add_argument("--merge", type=Path, default=None, help="keep this result file's other variants")
    args = ap.parse_args()
    names = args.variants.split(",") if args.variants else [n for n, v in VARIANTS.items() if not v[2] or args.weights_dir]
    if any(VARIANTS[n][2] for n in names) and args.weights_dir is None:
        ap.error("ImageNet variants need --weights-dir (stage one with `xincept-client stage-weights --from-keras FILE --out W`)")
    rows = {}
    if args.merge and args.merge.is_file():
        rows = json.loads(args.merge.read_text()).get("variants", {})
    for name in names:
        rows[name] = run_variant(name, args)
        print(strict_dumps({name: rows[name]}), file=sys.stderr)
    rows = {n: rows[n] for n in VARIANTS if n in rows}
    print(strict_dumps({"folds": args.folds, "seed": 0,
                      "weights": "per variant: backbone_weights names each backbone's (random or imagenet (keras))",
                      "variants": rows}, indent=1))


if __name__ == "__main__":
    main()
