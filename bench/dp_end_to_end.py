"""Whole-model DP (xincept.common.dp_linear) against the non-private federated model, on grouped 5-fold CV.

The federation of `xincept-server simulate --sites 4 --partition P --test-fold K` (the same partition of the data
set's patient groups over 4 sites, each site's same grouped train / validation / test split of fold K), with the
DP protocol of `--dp-mode whole-model` run in one process with the run mode's plan: every site releases its noisy
feature sum and class counts once, a noisy clipped gradient sum per step and its test split's two noisy counts (5% of the budget), and
nothing else; each site's epsilon covers all of it. Each site trains on its training and validation splits (the
run mode validates nothing), the non-private linear head too. The accuracy below is the experimenters' exact count on the test
images (the run mode reports it from the noisy counts, with their standard deviation). Rows with
`secure_aggregation` false: each site adds all the noise its epsilon needs. Rows with true: the releases are summed
by the secure-aggregation protocol (xincept.common.secagg, in process) and each of the 4 sites adds 1/sqrt(3) of the
noise's standard deviation (3: the majority threshold), so that the sum of any 3 carries all of it (distributed DP;
see "trust" in the JSON). Accuracy is pooled over every fold's test images. The non-private reference is the federated model of bench/results/fed_<weights>_<partition>_cv.json where
it exists (the shipped model: fused head and XGBoost), and the same linear head trained without noise beside it.

Hyperparameters (steps, learning rate) were chosen on the sites' validation splits at
epsilon 3 (IID), never on the test folds: `--tune` prints that search at the given epsilons: the run mode's default steps
(xincept.common.fedconfig.auto_dp_steps: 80 below epsilon 5, 160 from 5; with distributed noise 120 from epsilon 2 to 5)
come from it, as does the run mode's input size in whole-model DP (299 px: xincept.common.fedconfig.auto_input_size).

    python bench/dp_end_to_end.py --data ../shared/datasets/all4 --weights-dir W --cache-dir CACHE [--partition iid]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xincept.common.strict_json import dumps as strict_dumps  # noqa: E402

DELTA = 1e-5
TEST_FRACTION, VAL_FRACTION, SEED = 0.2, 0.15, 0  # FedSettings' defaults: the splits `simulate` gives each site


def load(data: Path, weights_dir: Path | None, cache_dir: Path, backbone: str, input_size: int):
    from xincept.common.config import BackboneConfig, RunConfig, SplitConfig
    from xincept.common.site import prepare_site

    cfg = RunConfig(backbone=BackboneConfig(names=(backbone,), input_size=input_size, pretrained=weights_dir is not None,
                                            weights_dir=weights_dir), split=SplitConfig(folds=5), cache_dir=cache_dir)
    return prepare_site(data, cfg, show_progress=False)


def site_splits(site, partition: str, fold: int, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per site: (training indices, ``split`` indices) into the whole data set, as `simulate --test-fold fold` has them.
    Scored on the test split, whole-model DP trains on the training and validation splits (the run mode's
    ``training_images``); tuned on the validation split, on the training split alone."""
    from xincept.common.partition import partition_groups
    from xincept.common.splits import site_split

    out = []
    for idx in partition_groups(site.data.records, 4, partition, len(site.classes), SEED):
        idx = np.asarray(idx)
        sp = site_split(site.y[idx], [site.groups[i] for i in idx], TEST_FRACTION, VAL_FRACTION, SEED, fold)
        train = np.concatenate([sp["train"], sp["val"]]) if split == "test" else sp["train"]
        out.append((idx[train], idx[sp[split]]))
    return out


def run_fold(x: np.ndarray, site, partition: str, fold: int, epsilon: float | None, cfg, split: str = "test",
             seed: int = 0, distributed: bool = False) -> tuple[int, int, float]:
    """(correct, tested, noise multiplier) of the linear head trained on fold ``fold``'s training splits.
    ``distributed``: the sites' releases are summed by secure aggregation and each site adds 1/sqrt(threshold) of the
    noise (threshold: a majority, 3 of 4), so that the sum of any threshold-many sites carries the whole noise
    (distributed DP, as `--dp-mode whole-model --secure-aggregation` runs it)."""
    from xincept.common.dp_linear import SiteDP, plain_sum, predict_proba, site_plan, train_linear_dp, unit_index
    from xincept.common.secagg import majority, secure_sum

    parts = site_splits(site, partition, fold, split)
    sigma = site_plan(epsilon, DELTA, cfg)[0] if epsilon else 0.0  # the run mode's plan: its test counts included
    share = sigma / np.sqrt(majority(len(parts))) if distributed else sigma  # as `--secure-aggregation` sites add
    sites = [SiteDP(x[tr], site.y[tr], unit_index(len(tr), [site.groups[i] for i in tr], cfg.unit), len(site.classes), cfg,
                    share, np.random.default_rng([seed, fold, k])) for k, (tr, _) in enumerate(parts)]
    w, mean = train_linear_dp(sites, len(site.classes), secure_sum if distributed else plain_sum)
    te = np.concatenate([t for _, t in parts])
    return int((predict_proba(w, mean, x[te]).argmax(1) == site.y[te]).sum()), len(te), sigma


def pooled(x, site, partition: str, epsilon: float | None, cfg, split: str = "test", seeds: int = 1,
           distributed: bool = False) -> dict:
    runs = [run_fold(x, site, partition, f, epsilon, cfg, split, s, distributed) for s in range(seeds) for f in range(5)]
    correct, n = sum(r[0] for r in runs), sum(r[1] for r in runs)
    return {"accuracy": correct / n, "n_test": n // seeds, "noise_multiplier": runs[0][2]}


def reference(weights: str, partition: str, input_size: int) -> float | None:
    """The non-private federated model's pooled accuracy on the same folds, with the same weights and input size
    (bench/federation.py: fed_imagenet_iid_cv.json at 224 px, fed_imagenet299_iid_cv.json at 299 px); None where not
    measured."""
    size = "" if input_size == 224 else str(input_size)
    path = ROOT / "bench" / "results" / f"fed_{weights}{size}_{partition.split(':')[0]}_cv.json"
    return json.loads(path.read_text())["accuracy"] if path.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "all4")
    ap.add_argument("--weights-dir", type=Path, default=None, help="staged ImageNet weights (absent: random weights)")
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--backbone", default="legacy_xception")
    ap.add_argument("--input-size", type=int, default=0, help="0: what `--dp-mode whole-model` embeds at (299 px)")
    ap.add_argument("--partitions", default="iid,dirichlet:0.5")
    ap.add_argument("--epsilons", default="1,3,8")
    ap.add_argument("--seeds", type=int, default=3, help="noise draws per fold (the accuracy is pooled over them)")
    ap.add_argument("--tune", action="store_true", help="print the validation-split search (IID, local and distributed noise, at --epsilons) and stop")
    args = ap.parse_args()

    from xincept.common.dp_linear import LinearDPConfig, scale_features
    from xincept.common.fedconfig import auto_dp_steps, auto_input_size

    args.input_size = args.input_size or auto_input_size("whole-model")

    site = load(args.data, args.weights_dir, args.cache_dir, args.backbone, args.input_size)
    x = scale_features([site.embeddings.base[b.name] for b in site.backbones])
    weights = "imagenet" if args.weights_dir else "random"
    base = LinearDPConfig()
    if args.tune:  # trained on the training splits, scored on the validation splits; never on a test fold
        for distributed in (False, True):
            for eps in [float(e) for e in args.epsilons.split(",")]:
                for steps in (80, 120, 160, 240):
                    cfg = replace(base, steps=steps)
                    r = pooled(x, site, "iid", eps, cfg, "val", args.seeds, distributed=distributed)
                    print(json.dumps({"epsilon": eps, "noise": "distributed" if distributed else "local", "steps": steps,
                                      "input_size": args.input_size, "lr": cfg.lr, "stats_share": cfg.stats_share,
                                      "val_accuracy": round(r["accuracy"], 4)}), flush=True)
        return
    rows, t0 = [], time.time()
    for partition in args.partitions.split(","):
        plain = pooled(x, site, partition, None, replace(base, steps=300, lr=3.0), "test", 1)["accuracy"]
        for unit, secure in (("image", False), ("image", True), ("patient", False)):
            for eps in [float(e) for e in args.epsilons.split(",")]:
                if unit == "patient" and eps != 8:
                    continue
                cfg = replace(base, unit=unit, steps=auto_dp_steps(eps, secure))  # what `--dp-mode whole-model` runs
                r = pooled(x, site, partition, eps, cfg, "test", args.seeds, distributed=secure)
                rows.append({"epsilon": eps, "delta": DELTA, "unit": unit, "partition": partition, "secure_aggregation": secure,
                             "weights": f"{weights} ({args.backbone}, {args.input_size} px)", "input_size": args.input_size,
                             "accuracy": r["accuracy"], "n_test": r["n_test"], "noise_multiplier": r["noise_multiplier"],
                             "non_private_accuracy": reference(weights, partition, args.input_size),
                             "non_private_linear_accuracy": plain, "model": "linear head, full-batch DP gradient descent",
                             "noise": "each site 1/sqrt(3) of it (3: the threshold of 4 sites), the sum by secure aggregation (distributed DP)" if secure
                                      else "each site all of it (local)", "config": cfg.describe()})
                print(f"{partition} {unit} eps {eps:g}{' secure' if secure else ''}: {100 * r['accuracy']:.1f}% "
                      f"(non-private linear {100 * plain:.1f}%)", file=sys.stderr, flush=True)
    print(strict_dumps({"protocol": "grouped 5-fold CV inside each of 4 simulated sites (simulate's partition and "
                        "splits), accuracy pooled over every fold's test images and the noise draws",
                        "accounting": "per site, the exact composition of every release (all Gaussian: feature sum and class counts once, every gradient "
                        "step, the test split's two counts), xincept.common.privacy_accounting, the plan of "
                        "xincept.common.dp_linear.site_plan that `--dp-mode whole-model` sites follow", "seeds": args.seeds,
                        "trust": "secure_aggregation true: the server sees only the sum of the sites' releases (the "
                                 "secure-aggregation protocol of xincept.common.secagg, run in process) and each site's "
                                 "epsilon holds while at least 3 sites add their share of the noise; the server with k "
                                 "colluding sites faces sqrt((4 - k) / 3) of it. false: each site's noise alone gives its "
                                 "epsilon.",
                        "command": "python bench/dp_end_to_end.py --data ../shared/datasets/all4 --weights-dir W --cache-dir CACHE "
                                   f"--input-size {args.input_size}", "input_size": args.input_size,
                        "wall_s": round(time.time() - t0, 1), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
