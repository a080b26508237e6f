"""What costs the fused head its accuracy: one change at a time against Algorithm 1's defaults, on the project's
own cached features and grouped folds (the folds of `xincept-server centralized --folds 5`).

Every variant trains on each fold's training part and is scored on the held-out fold (head softmax; XGBoost on
the head's 64-wide embedding beside it); early stopping uses the same grouped inner validation split as
`centralized`. "fixed N epochs" variants train on training + validation for N epochs (no early stopping).
Prints one JSON object: per variant, accuracy pooled over the folds' test images with its Wilson interval,
the per-fold accuracies and their spread, and (for the defaults and the plain-Adam recipes) XGBoost on the same
embedding.

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
PLAIN = dict(l2=0.0, dropout=0.0, batch_size=32, lr=1e-3, weight_decay=1e-4)  # the plain-Adam recipe
XGB = {"algorithm1 (defaults)", "plain Adam, early stopping", "plain Adam, fixed 30 epochs"}  # XGBoost beside these only
VARIANTS: dict[str, dict] = {  # name -> HeadConfig changes (+ "epochs": fixed epochs without early stopping, "branches")
    "algorithm1 (defaults)": {},
    "no Keras L2": {"l2": 0.0},
    "no input dropout": {"dropout": 0.0},
    "batch 32": {"batch_size": 32},
    "lr 3e-4": {"lr": 3e-4},
    "lr 3e-3": {"lr": 3e-3},
    "weight decay 1e-4": {"weight_decay": 1e-4},
    "no early stopping (fixed 30 epochs)": {"epochs": 30},
    "no L2, no dropout": {"l2": 0.0, "dropout": 0.0},
    "plain Adam, early stopping": dict(PLAIN),
    "plain Adam, fixed 30 epochs": {**PLAIN, "epochs": 30},
    "plain Adam, Xception alone": {**PLAIN, "branches": [0]},
    "plain Adam, InceptionV3 alone": {**PLAIN, "branches": [1]},
    "algorithm1, Xception alone": {"branches": [0]},
}


def run_variant(site, folds, cfg, changes: dict, salt_split, with_xgb: bool) -> dict:  # noqa: ANN001
    import torch

    from xincept.common.classifiers import fit_xgb, xgb_predict_proba
    from xincept.common.metrics import wilson_interval
    from xincept.common.model import select
    from xincept.common.train_head import embed_features, fit_head, new_head, predict_logits, train_epochs

    changes = dict(changes)
    epochs = changes.pop("epochs", 0)
    branches = changes.pop("branches", None)
    head_cfg = replace(cfg.head, **changes)
    feats = site.feats if branches is None else [site.feats[b] for b in branches]
    y = site.y
    accs, xgb_accs, ns, t0 = [], [], [], time.perf_counter()
    for i, fold in enumerate(folds):
        tr, val = salt_split(site, fold.train, cfg, salt=i + 1)
        if epochs:
            fit = np.concatenate([tr, val])
            torch.manual_seed(head_cfg.seed)
            head = new_head(select(feats, fit), len(site.classes), head_cfg)
            train_epochs(head, select(feats, fit), y[fit], epochs, head_cfg, seed=head_cfg.seed)
        else:
            head, _ = fit_head(select(feats, tr), y[tr], select(feats, val), y[val], len(site.classes), head_cfg)
        pred = predict_logits(head, select(feats, fold.test)).argmax(1)
        accs.append(float((pred == y[fold.test]).mean()))
        if with_xgb:
            booster = fit_xgb(embed_features(head, select(feats, tr)), y[tr], embed_features(head, select(feats, val)), y[val],
                              len(site.classes), cfg.xgb)
            proba = xgb_predict_proba(booster, embed_features(head, select(feats, fold.test)))
            xgb_accs.append(float((proba.argmax(1) == y[fold.test]).mean()))
        ns.append(len(fold.test))

    def pooled(values: list[float]) -> dict:
        correct = int(round(sum(a * n for a, n in zip(values, ns))))
        return {"accuracy": correct / sum(ns), "accuracy_ci95": wilson_interval(correct, sum(ns)),
                "fold_accuracy": values, "fold_sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    return {"head_softmax": pooled(accs), **({"xgboost_on_embedding": pooled(xgb_accs)} if with_xgb else {}),
            "seconds": round(time.perf_counter() - t0, 1)}


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
                                 **run_variant(site, folds, cfg, VARIANTS[name], _inner_split, name in XGB)}
        print(f"{name}: {out['variants'][name]['head_softmax']['accuracy']:.4f}", file=sys.stderr, flush=True)
        if args.partial:
            args.partial.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
