"""The pooled-data baseline: grouped k-fold cross-validation, then a final fit on all images."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from xincept import __version__
from xincept.common.atomic import write_json_atomic
from xincept.common.bundle import write_bundle
from xincept.common.classifiers import predict_proba_full, sklearn_zoo, xgb_description
from xincept.common.config import RunConfig
from xincept.common.data import SiteData
from xincept.common.metrics import bootstrap_ci, classification_metrics, prediction_curves, summarize_folds
from xincept.common.model import XinceptModel, fit_model, select, validation_choice
from xincept.common.progress import track
from xincept.common.report import write_reports
from xincept.common.site import EmbeddedSite, embedding_path, prepare_site, weights_meta
from xincept.common.splits import Fold, grouped_holdout, grouped_kfold, manifest_split
from xincept.common.versions import package_versions

log = logging.getLogger(__name__)


def protocol_for(site: EmbeddedSite, cfg: RunConfig) -> tuple[dict[str, Any], list[Fold]]:
    """The evaluation folds and a description of them, stored next to every number."""
    s = cfg.split
    fixed = manifest_split([r.split for r in site.data.records])
    group_rule = ("the manifest's group column" if any(r.split is not None for r in site.data.records)
                  else f"runs of {s.group_block} consecutive file numbers") + ", exact duplicates merged"
    base = {"seed": s.seed, "grouping": group_rule, "n_groups": site.data.report.n_groups,
            "inner_validation": f"grouped {s.val_fraction:.0%} of each training split, for early stopping"}
    if fixed is not None and len(fixed["test"]):
        fold = Fold(np.concatenate([fixed["train"], fixed["val"]]), fixed["test"])
        return {"kind": "manifest-holdout", "folds": 1, **base,
                "description": "held-out test split fixed by the manifest's split column"}, [fold]
    folds = grouped_kfold(site.y, site.groups, s.folds, s.seed)
    desc = (f"grouped stratified {s.folds}-fold cross-validation (seed {s.seed}; groups: {group_rule}); "
            "metrics pooled over out-of-fold predictions")
    return {"kind": "grouped-stratified-kfold", "folds": s.folds, **base, "description": desc}, folds


def _inner_split(site: EmbeddedSite, train: np.ndarray, cfg: RunConfig, salt: int) -> tuple[np.ndarray, np.ndarray]:
    inner = grouped_holdout(site.y[train], [site.groups[i] for i in train], cfg.split.val_fraction, cfg.split.seed + salt)
    return train[inner.train], train[inner.test]


def cross_validate(site: EmbeddedSite, folds: list[Fold], cfg: RunConfig, compare: bool, show_progress: bool = True) -> dict[str, Any]:
    classes, y, feats, views = site.classes, site.y, site.feats, site.views
    k = len(classes)
    oof = np.zeros((len(y), k))
    oof_head = np.zeros((len(y), k))
    oof_xgb = np.zeros((len(y), k))
    oof_zoo: dict[str, np.ndarray] = {}
    fold_rows = []
    items = list(enumerate(folds))
    for i, fold in track(items, "cross-validation folds", total=len(items)) if show_progress else items:
        tr, val = _inner_split(site, fold.train, cfg, salt=i + 1)
        model = fit_model(feats, views, y, tr, val, classes, cfg)
        x_te = select(feats, fold.test)
        chosen, val_acc = choose(model, select(feats, val), y[val], cfg)
        oof_xgb[fold.test] = model.predict_proba(x_te)
        oof_head[fold.test] = model.head_proba(x_te)
        oof[fold.test] = oof_head[fold.test] if chosen == "head_softmax" else oof_xgb[fold.test]
        row = {"fold": i, "n_train": int(len(tr)), "n_val": int(len(val)), "n_test": int(len(fold.test)),
               "best_epoch": model.history.best_epoch + 1, "classifier_chosen": chosen, "val_accuracy": val_acc,
               **classification_metrics(y[fold.test], oof[fold.test], classes),
               "xgboost": classification_metrics(y[fold.test], oof_xgb[fold.test], classes),
               "head_softmax": classification_metrics(y[fold.test], oof_head[fold.test], classes)}
        fold_rows.append(row)
        if compare:
            e_tr, e_te = model.xgb_inputs(select(feats, tr)).x, model.xgb_inputs(x_te).x  # the same rows, no head margin
            for name, clf in sklearn_zoo(cfg.split.seed).items():
                clf.fit(e_tr, y[tr])
                oof_zoo.setdefault(name, np.zeros((len(y), k)))[fold.test] = predict_proba_full(clf, e_te, k)
        log.info("fold %d/%d: accuracy %.3f (XGBoost), %.3f (head softmax); %s chosen on validation", i + 1, len(folds),
                 row["xgboost"]["accuracy"], row["head_softmax"]["accuracy"], chosen)
    tested = np.concatenate([f.test for f in folds])
    return {"oof": oof, "oof_head": oof_head, "oof_xgb": oof_xgb, "oof_zoo": oof_zoo, "folds": fold_rows, "tested": np.sort(tested)}


def choose(model: XinceptModel, val_feats: list[np.ndarray], y_val: np.ndarray, cfg: RunConfig) -> tuple[str, dict[str, float]]:
    """XGBoost, or with ``select = best-val`` whichever of XGBoost and the head's softmax is better on validation images;
    both validation accuracies are returned either way (reported beside the choice)."""
    chosen, val_acc = validation_choice(model, val_feats, y_val)
    return (chosen, val_acc) if cfg.xgb.select == "best-val" else ("xgboost", val_acc)


def run_centralized(data: Path, out: Path, cfg: RunConfig, classes: list[str] | None = None, manifest: Path | None = None,
                    compare: bool = False, n_boot: int = 1000, show_progress: bool = True,
                    allow_outside: bool = False) -> dict[str, Any]:
    """Train and evaluate on pooled data; write ``OUT/model``, ``OUT/metrics.json`` and ``OUT/report.md``."""
    t0 = time.perf_counter()
    from xincept.common.learnable import require_cv_folds

    def learnable(d: SiteData) -> None:  # before any backbone is built or image embedded
        fixed = any(r.split is not None for r in d.records)  # a manifest's split column: one fixed holdout
        require_cv_folds(d, 1 if fixed else cfg.split.folds)

    site = prepare_site(data, cfg, classes, manifest, show_progress, allow_outside, check=learnable)
    protocol, folds = protocol_for(site, cfg)
    t_embed = time.perf_counter() - t0
    cv = cross_validate(site, folds, cfg, compare, show_progress)
    y, idx = site.y, cv["tested"]
    groups = [site.groups[i] for i in idx]
    k_classes = site.classes
    glob = classification_metrics(y[idx], cv["oof"][idx], k_classes)
    glob.update(prediction_curves(y[idx], cv["oof"][idx], k_classes))  # ROC per class and reliability, out-of-fold
    glob["ci95"] = bootstrap_ci(y[idx], cv["oof"][idx], k_classes, groups=groups, n_boot=n_boot, seed=cfg.split.seed)
    metrics: dict[str, Any] = {
        "protocol": protocol,
        **{k: v for k, v in weights_meta(site.backbones).items() if k != "warning"},
        "classifier": (f"fused head + XGBoost on {xgb_description(cfg.xgb)}" if cfg.xgb.select == "xgboost" else
                       f"fused head, then XGBoost on {xgb_description(cfg.xgb)} or the head's softmax, per fold the one "
                       f"with the better accuracy on the fold's validation images (ties: XGBoost)"),
        "classifier_chosen": [f["classifier_chosen"] for f in cv["folds"]],
        "global": glob,
        "xgboost": classification_metrics(y[idx], cv["oof_xgb"][idx], k_classes),
        "head_softmax": classification_metrics(y[idx], cv["oof_head"][idx], k_classes),
        "folds": cv["folds"],
        "fold_summary": summarize_folds(cv["folds"]),
    }
    if cv["oof_zoo"]:
        metrics["comparison"] = {k: {m: metrics[k][m] for m in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr")}
                                 for k in ("xgboost", "head_softmax")}
        for name, proba in cv["oof_zoo"].items():
            m = classification_metrics(y[idx], proba[idx], k_classes)
            metrics["comparison"][name] = {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr")}

    all_idx = np.arange(len(y))
    tr, val = _inner_split(site, all_idx, cfg, salt=0)
    final = fit_model(site.feats, site.views, y, tr, val, site.classes, cfg)
    final_choice, final_val = choose(final, select(site.feats, val), y[val], cfg)
    if final_choice == "head_softmax":
        final.booster = None
    log.info("final model: %s", "the head's softmax (better on validation)" if final.booster is None else "XGBoost")
    t_total = time.perf_counter() - t0
    metrics["timing_s"] = {"check_and_embed": round(t_embed, 2), "total": round(t_total, 2), "images_embedded_now": site.embeddings.computed}
    meta = {
        "xincept_version": __version__,
        "classes": site.classes,
        **weights_meta(site.backbones),
        "backbones": [b.describe() for b in site.backbones],
        "input_size": cfg.backbone.input_size,
        "embedding_path": embedding_path(cfg),
        "augmentation": {"views": cfg.augment.views, "seed": cfg.augment.seed},
        "package_versions": package_versions(),
        "data_summary": site.data.report.summary(),
        "protocol": protocol,
        "trained_on": f"all {len(y)} images (final fit; inner grouped validation of {len(val)} for early stopping)",
        "classifier_selection": {"rule": cfg.xgb.select, "chosen": final_choice, "val_accuracy": final_val},
        "config": cfg.to_dict(),
    }
    out = Path(out)
    write_bundle(out / "model", final, meta)
    write_json_atomic(out / "metrics.json", metrics)
    write_reports(out, "XIncept-ALL centralized baseline", metrics, meta)
    log.info("accuracy %.3f (95%% CI %.3f-%.3f), %s", glob["accuracy"], *glob["ci95"]["accuracy"], protocol["kind"])
    return metrics
