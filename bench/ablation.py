"""What costs the fused head its accuracy: one change at a time against Algorithm 1's defaults, on the project's
own cached features and grouped folds (the folds of `xincept-server centralized --folds 5`).

Every variant trains on each fold's training part and is scored on the held-out fold by the head's softmax; the
grouped inner validation split is the one `centralized` uses (early stopping where a variant turns it on, XGBoost's
early stopping). Each variant changes one thing against the defaults (or names a whole recipe). Beside the
defaults, XGBoost on each candidate input: the 64-wide fusion embedding, the branches' 64-wide activations, the logits,
the raw pooled features; boosting from a constant or from the head's logits (base margin).
Prints one JSON object: per variant, accuracy pooled over the folds' test images with its Wilson interval,
the per-fold accuracies and their spread, and the epochs kept per fold.

    python bench/ablation.py [--data ../shared/datasets/all4] [--cache-dir DIR] [--variants "a;b;..."]

Random backbone weights (--no-pretrained), 224 px: numbers measure the pipeline, not a clinical model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

THESIS = ("legacy_xception", "inception_v3")
# Variants: HeadConfig changes against the defaults, plus "branches" (which backbones), "recipe": "algorithm1" (thesis
# Algorithm 1's training recipe, ALGORITHM1_RECIPE) and "absolute_eps" (the standardisation before the fix: variance
# + 1e-6, which shrank random-weight Xception's ~1e-4 features tenfold beside InceptionV3's)
VARIANTS: dict[str, dict] = {
    "defaults": {},
    "algorithm1 recipe, absolute-eps standardisation (before the fix)": {"recipe": "algorithm1", "absolute_eps": True},
    "algorithm1 recipe": {"recipe": "algorithm1"},
    "defaults, absolute-eps standardisation": {"absolute_eps": True},
    "+ Keras L2 0.01": {"l2": 0.01},
    "+ input dropout 0.5": {"dropout": 0.5},
    "+ early stopping (patience 20, at most 100 epochs)": {"patience": 20, "max_epochs": 100},
    "batch 64": {"batch_size": 64},
    "no label smoothing": {"label_smoothing": 0.0},
    "label smoothing 0.2": {"label_smoothing": 0.2},
    "no weight decay": {"weight_decay": 0.0},
    "lr 3e-4": {"lr": 3e-4},
    "lr 3e-3": {"lr": 3e-3},
    "20 epochs": {"max_epochs": 20},
    "50 epochs": {"max_epochs": 50},
    "Xception alone": {"branches": [0]},
    "InceptionV3 alone": {"branches": [1]},
    "Xception alone, no label smoothing": {"branches": [0], "label_smoothing": 0.0},
    "Xception alone, algorithm1 recipe": {"branches": [0], "recipe": "algorithm1"},
    "InceptionV3 alone, algorithm1 recipe": {"branches": [1], "recipe": "algorithm1"},
}
# XGBoost beside the defaults on each of these inputs; "+margin": boosting from the head's logits (base_margin, the
# default --xgb-margin head) instead of a constant. "fused" (the raw 4,096 pooled features) is centralized-only.
XGB_INPUTS = ("embedding", "branches", "logits", "fused", "embedding+margin", "branches+margin", "fused+margin")


def _absolute_eps(sums: dict, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    n = float(sums["n"][0])
    mean = sums["sum"] / n
    var = np.maximum(sums["sumsq"] / n - mean**2, 0.0)
    return mean.astype(np.float32), np.sqrt(var + eps).astype(np.float32)


def run_variant(site, folds, cfg, changes: dict, salt_split, xgb_inputs: tuple[str, ...] = ()) -> dict:  # noqa: ANN001
    from unittest import mock

    from xincept.common import train_head
    from xincept.common.classifiers import fit_xgb, xgb_predict_proba
    from xincept.common.config import ALGORITHM1_RECIPE
    from xincept.common.metrics import wilson_interval
    from xincept.common.model import XinceptModel, select

    changes = dict(changes)
    branches = changes.pop("branches", None)
    recipe = ALGORITHM1_RECIPE if changes.pop("recipe", None) == "algorithm1" else {}
    absolute = changes.pop("absolute_eps", False)
    head_cfg = replace(cfg.head, **{**recipe, **changes})
    feats = site.feats if branches is None else [site.feats[b] for b in branches]
    y = site.y
    accs, xgb_accs, ns, epochs, t0 = [], {k: [] for k in xgb_inputs}, [], [], time.perf_counter()
    patch = mock.patch.object(train_head, "sums_to_mean_std", _absolute_eps) if absolute else mock.patch.object(train_head, "log", train_head.log)
    for i, fold in enumerate(folds):
        tr, val = salt_split(site, fold.train, cfg, salt=i + 1)
        with patch:
            head, hist = train_head.fit_head(select(feats, tr), y[tr], select(feats, val), y[val], len(site.classes), head_cfg)
        epochs.append(hist.best_epoch + 1)
        pred = train_head.predict_logits(head, select(feats, fold.test)).argmax(1)
        accs.append(float((pred == y[fold.test]).mean()))
        for kind in xgb_inputs:
            features, _, margin = kind.partition("+")
            model = XinceptModel(head=head, booster=None, classes=site.classes, xgb_features=features,
                                 xgb_margin="head" if margin else "none")
            booster = fit_xgb(model.xgb_inputs(select(feats, tr)), y[tr], model.xgb_inputs(select(feats, val)), y[val],
                              len(site.classes), cfg.xgb)
            proba = xgb_predict_proba(booster, model.xgb_inputs(select(feats, fold.test)))
            xgb_accs[kind].append(float((proba.argmax(1) == y[fold.test]).mean()))
        ns.append(len(fold.test))

    def pooled(values: list[float]) -> dict:
        correct = int(round(sum(a * n for a, n in zip(values, ns))))
        return {"accuracy": correct / sum(ns), "accuracy_ci95": wilson_interval(correct, sum(ns)),
                "fold_accuracy": values, "fold_sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    return {"head_softmax": pooled(accs), **{f"xgboost_on_{k}": pooled(v) for k, v in xgb_accs.items()},
            "epochs_kept": epochs, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/all4"))
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--variants", default=";".join(VARIANTS), help="names separated by ';' (default: all)")
    ap.add_argument("--partial", type=Path, default=None, help="also rewrite this JSON file after every variant")
    args = ap.parse_args()

    from xincept.common.config import BackboneConfig, RunConfig, SplitConfig, default_cache_dir
    from xincept.common.site import prepare_site
    from xincept.server.centralized import _inner_split, protocol_for

    cfg = RunConfig(backbone=BackboneConfig(names=THESIS, input_size=224, pretrained=False),
                    split=SplitConfig(folds=args.folds), cache_dir=args.cache_dir or default_cache_dir())
    site = prepare_site(args.data, cfg, show_progress=False)
    protocol, folds = protocol_for(site, cfg)
    out = {"weights": "random (--no-pretrained)", "input_size": 224, "protocol": protocol["description"],
           "command": "python bench/ablation.py --data ../shared/datasets/all4 --cache-dir CACHE", "variants": {}}
    for name in args.variants.split(";"):
        out["variants"][name] = {"changes": VARIANTS[name],
                                 **run_variant(site, folds, cfg, VARIANTS[name], _inner_split,
                                               XGB_INPUTS if name == "defaults" else ())}
        print(f"{name}: {out['variants'][name]['head_softmax']['accuracy']:.4f}", file=sys.stderr, flush=True)
        if args.partial:
            args.partial.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
