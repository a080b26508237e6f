"""Embedding throughput: the naive path against the default fast path, in one run on the same images.

Prints one JSON object. Naive: float32, eager, NCHW, 299 px, batch 16, decode in the same thread.
Default: what `embed_records` chooses on this machine (see xincept/common/numerics.py) at 224 px.
feature_cosine_min compares default-path features with float32 features at the same input size;
accuracy_delta is grouped 5-fold accuracy (head + XGBoost) on default-path features minus the same
on float32 features, same folds. Backbones use random weights unless --weights-dir is given.

    python bench/embed.py [--data ../shared/datasets/all4] [--images 128] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from xincept.common.strict_json import dumps as strict_dumps  # noqa: E402
os.environ.setdefault("XINCEPT_NO_PROGRESS", "1")

from xincept.common.backbones import load_backbones  # noqa: E402
from xincept.common.config import THESIS_BACKBONES, BackboneConfig, RunConfig  # noqa: E402
from xincept.common.data import scan_site  # noqa: E402
from xincept.common.embed import embed_records  # noqa: E402
from xincept.common.numerics import choose_path  # noqa: E402

log = logging.getLogger("bench.embed")


def naive_throughput(records, names: tuple[str, ...], n_images: int) -> float:
    """Images per second through ``names`` together: fp32, eager, NCHW, 299 px, batch 16, serial decode."""
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_model_data_config

    models, transforms = [], []
    for name in names:
        torch.manual_seed(0)
        m = timm.create_model(name, pretrained=False, num_classes=0).eval()
        cfg = resolve_model_data_config(m)
        cfg["input_size"] = (3, 299, 299)
        models.append(m)
        transforms.append(create_transform(**cfg))
    recs = records[:n_images]
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(recs), 16):
            imgs = [Image.open(r.path).convert("RGB") for r in recs[i : i + 16]]
            for m, t in zip(models, transforms):
                m(torch.stack([t(img) for img in imgs]))
    return len(recs) / (time.perf_counter() - t0)


def default_throughput(records, cfg: BackboneConfig, n_images: int) -> float:
    bbs = load_backbones(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        embed_records(records[:n_images], bbs, Path(tmp), cfg, show_progress=False)
        return n_images / (time.perf_counter() - t0)


def _embed_full(args: tuple) -> tuple[float, float]:
    """Child process: embed every image, return (seconds, peak RSS in MB)."""
    data, cfg, cache = args
    site = scan_site(data, show_progress=False)
    bbs = load_backbones(cfg)
    t0 = time.perf_counter()
    embed_records(site.records, bbs, cache, cfg, show_progress=False)
    return time.perf_counter() - t0, _peak_rss_mb()


def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM; ru_maxrss would carry over the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lr_cv_accuracy(feats: list[np.ndarray], y: np.ndarray, groups: list[str]) -> float:
    """Grouped 5-fold accuracy of logistic regression on standardised signed-log fused features (convex: no training noise)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from xincept.common.head import signed_log
    from xincept.common.splits import grouped_kfold

    x = signed_log(np.concatenate(feats, axis=1))
    correct = 0
    for fold in grouped_kfold(y, groups, 5, seed=0):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=300)).fit(x[fold.train], y[fold.train])
        correct += int((clf.predict(x[fold.test]) == y[fold.test]).sum())
    return correct / len(y)


def cv_accuracy(feats: list[np.ndarray], y: np.ndarray, groups: list[str], seed: int = 0) -> float:
    from xincept.common.config import HeadConfig, XGBConfig
    from xincept.common.model import fit_model
    from xincept.common.splits import grouped_holdout, grouped_kfold

    cfg = RunConfig(head=HeadConfig(seed=seed), xgb=XGBConfig(seed=seed))
    correct = 0
    for i, fold in enumerate(grouped_kfold(y, groups, 5, seed=0)):
        inner = grouped_holdout(y[fold.train], [groups[j] for j in fold.train], 0.15, i + 1)
        model = fit_model(feats, None, y, fold.train[inner.train], fold.train[inner.test], [str(c) for c in range(y.max() + 1)], cfg)
        correct += int((model.predict_proba([f[fold.test] for f in feats]).argmax(1) == y[fold.test]).sum())
    return correct / len(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "all4")
    ap.add_argument("--images", type=int, default=128, help="images for the throughput comparison")
    ap.add_argument("--cache-dir", type=Path, default=None, help="embedding cache for the whole-dataset part (float32 features are reused)")
    ap.add_argument("--input-size", type=int, default=224)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data, synthetic = args.data, False
    tmp_data = None
    if not data.is_dir():
        from xincept.common.synthetic import write_image_folder

        tmp_data = tempfile.TemporaryDirectory()
        data, synthetic = write_image_folder(Path(tmp_data.name) / "synthetic", per_class=60, size=224, ext=".jpg"), True
        log.warning("%s not found: using a generated (synthetic) image set", args.data)
    site = scan_site(data, show_progress=False)
    rng = np.random.default_rng(0)
    sample = [site.records[i] for i in rng.permutation(len(site.records))]
    n = min(args.images, len(sample))

    default_cfg = BackboneConfig(names=THESIS_BACKBONES, input_size=args.input_size, pretrained=False)
    fp32_cfg = replace(default_cfg, precision="fp32")
    per_backbone = {}
    for name in THESIS_BACKBONES:
        naive = naive_throughput(sample, (name,), n)
        fast = default_throughput(sample, replace(default_cfg, names=(name,)), n)
        per_backbone[name] = {"naive_images_per_s": round(naive, 2), "default_images_per_s": round(fast, 2), "speedup": round(fast / naive, 2)}
    naive_pair = naive_throughput(sample, THESIS_BACKBONES, n)
    fast_pair = default_throughput(sample, default_cfg, n)

    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="xincept-bench-"))
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:  # a fresh process, so peak RSS is that of embedding alone
        full_s, peak_mb = pool.apply(_embed_full, ((data, default_cfg, cache),))
    with ctx.Pool(1) as pool:
        fp32_s, _ = pool.apply(_embed_full, ((data, fp32_cfg, cache),))

    bbs = load_backbones(default_cfg)
    fast = embed_records(site.records, bbs, cache, default_cfg, show_progress=False)
    ref = embed_records(site.records, bbs, cache, fp32_cfg, show_progress=False)
    cos_min = min(
        float(((a * r).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1))).min())
        for a, r in ((fast.base[b.name], ref.base[b.name]) for b in bbs)
    )
    y = np.array([r.label for r in site.records])
    groups = [r.group for r in site.records]
    fast_feats, ref_feats = [fast.base[b.name] for b in bbs], [ref.base[b.name] for b in bbs]
    lr_fast, lr_ref = lr_cv_accuracy(fast_feats, y, groups), lr_cv_accuracy(ref_feats, y, groups)
    seeds = (0, 1, 2)
    head_fast = [cv_accuracy(fast_feats, y, groups, s) for s in seeds]
    head_ref = [cv_accuracy(ref_feats, y, groups, s) for s in seeds]

    print(strict_dumps({
        "data": str(args.data) if not synthetic else "synthetic (generated)",
        "weights": "random (--no-pretrained)",
        "images_timed": n,
        "naive": "float32, eager, NCHW, 299 px, batch 16, serial decode",
        "default_path": {**choose_path(default_cfg).describe(), "input_size": args.input_size},
        "naive_images_per_s": round(naive_pair, 2),
        "default_images_per_s": round(fast_pair, 2),
        "speedup": round(fast_pair / naive_pair, 2),
        "per_backbone": per_backbone,
        "full_dataset_images": len(site.records),
        "full_dataset_default_s": round(full_s, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "full_dataset_fp32_s": round(fp32_s, 1),
        "fp32_note": "fp32 features are read from --cache-dir where present, so this time may not be an embedding time",
        "feature_cosine_min": round(cos_min, 6),
        "accuracy_default": round(lr_fast, 4),
        "accuracy_fp32": round(lr_ref, 4),
        "accuracy_delta": round(100 * (lr_fast - lr_ref), 2),
        "accuracy_protocol": ("grouped stratified 5-fold CV (seed 0), logistic regression on standardised signed-log fused features, "
                              "accuracy pooled over folds; delta in points (a convex classifier, so the delta reflects the features, "
                              "not training noise)"),
        "head_xgb_accuracy_default_per_seed": [round(a, 4) for a in head_fast],
        "head_xgb_accuracy_fp32_per_seed": [round(a, 4) for a in head_ref],
        "head_xgb_accuracy_delta_mean": round(100 * (np.mean(head_fast) - np.mean(head_ref)), 2),
        "head_xgb_seed_spread_fp32": round(100 * (max(head_ref) - min(head_ref)), 2),
        "cpu_threads": __import__("torch").get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
