"""What costs the fused head its accuracy: one change at a time against Algorithm 1's defaults, on the project's
own cached features and grouped folds (the folds of `xincept-server centralized --folds 5`).

Every variant trains on each fold's training part and is scored on the held-out fold by the head's softmax; the
grouped inner validation split is the one `centralized` uses (early stopping where a variant turns it on, XGBoost's
early stopping). Each variant changes one thing against the defaults (or names a whole recipe); the last rows try
other fusions than Algorithm 1's (wider branches, fusing the branches' 64-wide activations, deep supervision of each
branch, averaged heads) to see whether InceptionV3 can add to Xception at all. Beside the
defaults, XGBoost on each candidate input: the 64-wide fusion embedding, the branches' 64-wide activations, the logits,
the raw pooled features; boosting from a constant or from the head's logits (base margin).
Prints one JSON object: per variant, accuracy pooled over the folds' test images with its Wilson interval,
the per-fold accuracies and their spread, and the epochs kept per fold.

    python bench/ablation.py [--data ../shared/datasets/all4] [--cache-dir DIR] [--variants "a;b;..."]

Random backbone weights (--no-pretrained), 224 px: numbers measure the pipeline, not a clinical model.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from xincept.common.strict_json import dumps as strict_dumps

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
    # fusion alternatives (not Algorithm 1's structure): can another fusion make InceptionV3 add to Xception?
    "branch width 128": {"branch_width": 128},
    "fusion on the branches' 64-wide activations (no K-wide bottleneck)": {"wide_fusion": True},
    "deep supervision (each branch's K-wide output also trained on the labels, weight 0.5)": {"deep_supervision": 0.5},
    "+ input dropout 0.2": {"dropout": 0.2},
    "Xception alone, on its 64-wide activations (no K-wide bottleneck)": {"branches": [0], "wide_fusion": True},
    "3 heads averaged (seeds 0-2)": {"members": 3},
    "Xception alone, 3 heads averaged (seeds 0-2)": {"branches": [0], "members": 3},
}
# XGBoost beside the defaults on each of these inputs; "+margin": boosting from the head's logits (base_margin, the
# default --xgb-margin head) instead of a constant. "fused" (the raw 4,096 pooled features) is centralized-only.
XGB_INPUTS = ("embedding", "branches", "logits", "fused", "embedding+margin", "branches+margin", "fused+margin")


def _absolute_eps(sums: dict, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    n = float(sums["n"][0])
    mean = sums["sum"] / n
    var = np.maximum(sums["sumsq"] / n - mean**2, 0.0)
    return mean.astype(np.float32), np.sqrt(var + eps).astype(np.float32)


def _wide_fusion_head():
    """A FusedHead whose fusion takes the branches' 64-wide activations instead of their K-wide outputs."""
    import torch
    from torch import nn

    from xincept.common.head import FusedHead

    class WideFusionHead(FusedHead):
        def __init__(self, in_dims, num_classes, cfg) -> None:  # noqa: ANN001
            super().__init__(in_dims, num_classes, cfg)
            self.fusion[0] = nn.Linear(cfg.branch_width * len(in_dims), cfg.fusion_widths[0])

        def embed(self, feats, standardised=False):  # noqa: ANN001
            zs = feats if standardised else self.standardise(feats)
            return self.fusion(torch.cat([b[:2](self.drop(z)) for b, z in zip(self.branches, zs)], dim=1))

    return WideFusionHead


def _deep_supervision_epochs(weight: float):
    """train_epochs with each branch's K-wide output also trained on the labels (loss weight ``weight``)."""
    import torch
    from torch import nn

    from xincept.common.train_head import to_tensors

    def train_epochs(head, feats, y, epochs, cfg, seed=0, optimizer=None, prox_mu=0.0):  # noqa: ANN001, ARG001
        xs, yt = to_tensors(feats), torch.as_tensor(y, dtype=torch.long)
        opt = optimizer or torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        gen = torch.Generator().manual_seed(seed)
        head.train()
        total, count = 0.0, 0
        for _ in range(epochs):
            perm = torch.randperm(len(yt), generator=gen)
            for i in range(0, len(perm), cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                outs = [b(head.drop(z)) for b, z in zip(head.branches, head.standardise([x[idx] for x in xs]))]
                loss = loss_fn(head.classifier(head.fusion(torch.cat(outs, dim=1))), yt[idx])
                aux = sum(loss_fn(o, yt[idx]) for o in outs) / len(outs)
                opt.zero_grad()
                (loss + weight * aux + head.l2_penalty()).backward()
                opt.step()
                total, count = total + loss.item() * len(idx), count + len(idx)
        head.eval()
        return total / max(count, 1)

    return train_epochs


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
    members = changes.pop("members", 1)
    patches = []
    if absolute:
        patches.append(mock.patch.object(train_head, "sums_to_mean_std", _absolute_eps))
    if changes.pop("wide_fusion", False):
        patches.append(mock.patch.object(train_head, "FusedHead", _wide_fusion_head()))
    if "deep_supervision" in changes:
        patches.append(mock.patch.object(train_head, "train_epochs", _deep_supervision_epochs(changes.pop("deep_supervision"))))
    head_cfg = replace(cfg.head, **{**recipe, **changes})
    feats = site.feats if branches is None else [site.feats[b] for b in branches]
    y = site.y
    accs, xgb_accs, ns, epochs, t0 = [], {k: [] for k in xgb_inputs}, [], [], time.perf_counter()
    for i, fold in enumerate(folds):
        tr, val = salt_split(site, fold.train, cfg, salt=i + 1)
        proba = 0.0
        for m in range(members):  # members > 1: heads from seeds seed..seed+members-1, their softmax averaged
            with contextlib.ExitStack() as stack:
                for p in patches:
                    stack.enter_context(p)
                head, hist = train_head.fit_head(select(feats, tr), y[tr], select(feats, val), y[val], len(site.classes),
                                                 replace(head_cfg, seed=head_cfg.seed + m))
            proba = proba + train_head.softmax(train_head.predict_logits(head, select(feats, fold.test)))
        epochs.append(hist.best_epoch + 1)
        pred = proba.argmax(1)
        accs.append(float((pred == y[fold.test]).mean()))
        for kind in xgb_inputs:
            features, _, margin = kind.partition("+")
            model = XinceptModel(head=head, booster=None, classes=site.classes, xgb_features=features,
                                 xgb_margin="head" if margin else "none")
            booster = fit_xgb(model.xgb_inputs(select(feats, tr)), y[tr], model.xgb_inputs(select(feats, val)), y[val],
                              len(site.classes), cfg.xgb)
            xgb_proba = xgb_predict_proba(booster, model.xgb_inputs(select(feats, fold.test)))
            xgb_accs[kind].append(float((xgb_proba.argmax(1) == y[fold.test]).mean()))
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
            args.partial.write_text(strict_dumps(out, indent=1))
    print(strict_dumps(out, indent=1))


if __name__ == "__main__":
    main()
