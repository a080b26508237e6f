"""DP-SGD cost at a site: a DP epoch (Opacus fast gradient clipping) against a plain epoch, on the same features, in one run.

Prints one JSON object. Features: the cached backbone features of one simulated site of
../shared/datasets/all4 when --partition-dir and --cache-dir are given, otherwise random features of
the same width (2 x 2,048) and --images rows. Epochs alternate (plain, DP, plain, DP, ...) so drift
on a shared machine hits both; the ratio is of medians. Also reports what the naive per-sample
path (one backward per image, as a loop) costs on a small slice, to show why hooks are used.

    python bench/dp.py [--images 640] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from xincept.common.strict_json import dumps as strict_dumps  # noqa: E402
os.environ.setdefault("XINCEPT_NO_PROGRESS", "1")

from xincept.common.config import HeadConfig  # noqa: E402
from xincept.common.dp import dp_train_epochs, make_plan  # noqa: E402
from xincept.common.train_head import new_head, train_epochs  # noqa: E402


def naive_per_sample_epoch(feats: list[np.ndarray], y: np.ndarray, cfg: HeadConfig, n: int) -> float:
    """Seconds per image of the naive DP path: one forward/backward per image, clip, sum (no noise needed to time it)."""
    head = new_head(feats, 4, cfg)
    xs = [torch.as_tensor(f[:n]) for f in feats]
    yt = torch.as_tensor(y[:n])
    t = time.perf_counter()
    for i in range(n):
        head.zero_grad()
        loss = torch.nn.functional.cross_entropy(head([x[i : i + 1] for x in xs]), yt[i : i + 1])
        loss.backward()
        norm = torch.sqrt(sum((p.grad**2).sum() for p in head.parameters()))
        for p in head.parameters():
            p.grad.mul_(min(1.0, 1.0 / float(norm)))
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=640)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, args.images)
    feats = [(rng.normal(size=(args.images, 2048)) + y[:, None] * 0.05).astype(np.float32) for _ in range(2)]
    cfg = HeadConfig()
    plan = make_plan(args.images, cfg.batch_size, 1, 20, 8.0, 1e-5, 1.0)
    plain, dp, hooks = [], [], []
    for r in range(args.repeats + 1):  # the first round warms up and is dropped
        head = new_head(feats, 4, cfg)
        t = time.perf_counter()
        train_epochs(head, feats, y, 1, cfg, seed=r)
        a = time.perf_counter() - t
        times = []
        for mode in ("ghost", "hooks"):
            head = new_head(feats, 4, cfg)
            t = time.perf_counter()
            dp_train_epochs(head, feats, y, 1, cfg, plan, seed=r, mode=mode)
            times.append(time.perf_counter() - t)
        if r:
            plain.append(a)
            dp.append(times[0])
            hooks.append(times[1])
    naive = naive_per_sample_epoch(feats, y, cfg, 64) * args.images
    print(strict_dumps({
        "images": args.images, "feature_width": [2048, 2048], "batch_size": cfg.batch_size, "threads": args.threads,
        "plain_epoch_s": round(statistics.median(plain), 4), "dp_epoch_s": round(statistics.median(dp), 4),
        "dp_over_plain": round(statistics.median(dp) / statistics.median(plain), 2),
        "hooks_epoch_s": round(statistics.median(hooks), 4),
        "hooks_over_plain": round(statistics.median(hooks) / statistics.median(plain), 2),
        "naive_per_sample_epoch_s": round(naive, 3), "naive_over_plain": round(naive / statistics.median(plain), 1),
        "noise_multiplier": plan.noise_multiplier, "repeats": args.repeats,
        "note": "dp = Opacus fast gradient clipping (ghost, the default); hooks = materialised per-sample gradients; naive = per-image backward loop; all against a plain Adam epoch on the fused head",
    }, indent=1))


if __name__ == "__main__":
    main()
