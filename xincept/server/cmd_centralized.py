"""`xincept-server centralized`: the pooled-data baseline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from xincept.common.cli import (
    AllowOutsideOpt, BackbonesOpt, CacheDirOpt, ClassesOpt, DataOpt, DeviceOpt, GroupBlockOpt, InputSizeOpt, ManifestOpt,
    NoPretrainedOpt, OutOpt, PrecisionOpt, RandomBackbonesOpt, VerboseOpt, WeightsDirOpt, friendly_errors, setup_logging,
    warn_random_weights,
    split_names,
)
from xincept.common.config import THESIS_BACKBONES

log = logging.getLogger(__name__)


@friendly_errors
def centralized(
    data: DataOpt,
    out: OutOpt,
    folds: Annotated[int, typer.Option("--folds", help="Grouped stratified cross-validation folds.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed for splits, head initialisation and XGBoost.")] = 0,
    no_pretrained: NoPretrainedOpt = False,
    random_backbones: RandomBackbonesOpt = None,
    weights_dir: WeightsDirOpt = None,
    cache_dir: CacheDirOpt = None,
    input_size: InputSizeOpt = 224,
    backbones: BackbonesOpt = ",".join(THESIS_BACKBONES),
    classes: ClassesOpt = None,
    manifest: ManifestOpt = None,
    allow_outside_paths: AllowOutsideOpt = False,
    group_block: GroupBlockOpt = 25,
    augment_views: Annotated[int, typer.Option("--augment-views", help="Augmented views per training image (thesis Table 3.2), cached like originals.")] = 0,
    activation: Annotated[str, typer.Option("--activation", help="Head activation: relu or gelu.")] = "relu",
    xgb_features: Annotated[str, typer.Option("--xgb-features", help="XGBoost inputs: branches (each backbone branch's 64-wide "
                                              "activations, default), embedding (the 64-wide fusion layer), logits, or fused "
                                              "(raw pooled features).")] = "branches",
    xgb_margin: Annotated[str, typer.Option("--xgb-margin", help="head: XGBoost boosts from the head's logits (its trees "
                                            "correct the head; default); none: from a constant, as in the thesis.")] = "head",
    select_classifier: Annotated[str, typer.Option("--select-classifier", help="xgboost: always XGBoost (the thesis; default); "
                                                   "best-val: per fold (and for the final model) XGBoost or the head's softmax, "
                                                   "whichever is more accurate on validation images.")] = "xgboost",
    head_recipe: Annotated[str, typer.Option("--head-recipe", help="default: the project's head training recipe (README); "
                                             "algorithm1: the thesis' (Keras L2 0.01, input dropout 0.5, batch 64, early "
                                             "stopping).")] = "default",
    compare: Annotated[bool, typer.Option("--compare", help="Also evaluate SVM, KNN, AdaBoost, logistic regression and random forest on the same folds.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per embedding batch.")] = 32,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    verbose: VerboseOpt = False,
) -> None:
    """Train and cross-validate on pooled data; write OUT/model, OUT/metrics.json and OUT/report.md."""
    setup_logging(verbose)
    from xincept.common.config import (AugmentConfig, BackboneConfig, HeadConfig, RunConfig, SplitConfig, XGBConfig,
                                       default_cache_dir, head_recipe_changes)
    from xincept.common.report import metric_text
    from xincept.common.site import weights_label
    from xincept.server.centralized import run_centralized

    cfg = RunConfig(
        backbone=BackboneConfig(names=tuple(split_names(backbones) or THESIS_BACKBONES), input_size=input_size,
                                pretrained=not no_pretrained, weights_dir=weights_dir, batch_size=batch_size, device=device,
                                precision=precision, random_backbones=tuple(split_names(random_backbones) or ())),
        head=HeadConfig(activation=activation, seed=seed, **head_recipe_changes(head_recipe)),
        xgb=XGBConfig(features=xgb_features, margin=xgb_margin, seed=seed, select=select_classifier),
        split=SplitConfig(folds=folds, seed=seed, group_block=group_block),
        augment=AugmentConfig(views=augment_views, seed=seed),
        cache_dir=cache_dir or default_cache_dir(),
    )
    warn_random_weights(cfg.backbone.names, cfg.backbone.pretrained, cfg.backbone.random_backbones)
    metrics = run_centralized(data, out, cfg, split_names(classes), manifest, compare=compare,
                              allow_outside=allow_outside_paths)
    g = metrics["global"]
    lo, hi = g["ci95"]["accuracy"]
    typer.echo(
        f"accuracy {100 * g['accuracy']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}), macro F1 {metric_text(g, 'macro_f1')}, "
        f"AUC {metric_text(g, 'auc_ovr')} [{metrics['protocol']['kind']}, weights: {weights_label(metrics)}]\n"
        f"classifier per fold: {', '.join(metrics['classifier_chosen'])} (XGBoost alone "
        f"{100 * metrics['xgboost']['accuracy']:.1f}%, head softmax alone {100 * metrics['head_softmax']['accuracy']:.1f}%)\n"
        f"wrote {Path(out) / 'model'}, {Path(out) / 'metrics.json'}, {Path(out) / 'report.md'}"
    )
