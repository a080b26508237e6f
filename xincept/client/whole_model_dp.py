"""A site's part of whole-model DP (``dp-mode whole-model``, xincept.common.dp_linear). Science only, no Flower.

Everything this site releases in such a run is one of the releases its plan names, each recorded in its privacy
ledger before it leaves and refused when it would spend more than the run's ``dp-epsilon`` or the site's lifetime
budget:

- once, its noisy feature sum and class counts of the scaled training features (the server centres the features and
  fixes the head's bias at the log class prior);
- per step, its noisy clipped gradient sum of the linear head (the server steps the shared weights);
- its test split's numbers of correct predictions and of images under Gaussian noise (nothing else of the
  evaluation: no confusion matrix, loss or histograms).

The noise comes from the operating system's entropy, never from a seed the server knows. Nothing is kept between
messages but the ledger: every step's request carries the weights and the released mean.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xincept.common.dp import BudgetSpent, PrivacyLedger
from xincept.common.dp_linear import COUNTS_WHAT, SiteDP, config_of, noisy_test_counts, plan_of, scale_features, unit_index
from xincept.common.fedconfig import FedSettings
from xincept.common.model import select
from xincept.common.privacy_accounting import Release, epsilon_of


def run_key(s: FedSettings) -> str:
    return "whole-model-" + hashlib.sha256(json.dumps(s.client_flat(), sort_keys=True).encode()).hexdigest()[:16]


def training_images(local) -> np.ndarray:
    """The images whole-model DP trains on: the training and the validation split. Nothing is validated in this
    mode (no round or classifier is selected, no validation count leaves), so the validation images train too
    (bench/dp_end_to_end.py: +0.5 points at epsilon 3 and 8); the test split stays apart."""
    return np.concatenate([local.split["train"], local.split["val"]])


def _scaled(local) -> np.ndarray:
    """The training images' scaled features, computed once per loaded site."""
    cache = local.standardised
    key = b"whole-model-dp"
    if key not in cache:
        cache[key] = scale_features(select(local.site.feats, training_images(local)))
    return cache[key]


def _site(local, sigma: float) -> SiteDP:
    s = local.settings
    idx = training_images(local)
    units = unit_index(len(idx), [local.site.groups[i] for i in idx], s.dp_unit)
    return SiteDP(_scaled(local), local.site.y[idx], units, len(local.classes), config_of(s), sigma,
                  np.random.default_rng(secrets.randbits(128)))


def spend(local, ledger_path: Path, planned: Release, lifetime_epsilon: float = float("inf")) -> dict[str, float]:
    """Record one release of the ``planned`` kind in the ledger if the plan (at most ``planned.count`` of it), the
    run's and the lifetime budgets allow it; returns the run's spent epsilon."""
    s = local.settings
    from xincept.client.task import dataset_id

    release = Release(planned.kind, planned.noise, 1, planned.what)
    ledger = PrivacyLedger(ledger_path, dataset_id(local))
    key = run_key(s)
    run = ledger.releases(key) + [release]
    if sum(r.count for r in run if r.what == release.what) > planned.count:
        raise BudgetSpent(f"site {local.name} refuses to release its {release.what} again: its plan for this run allows "
                          f"{planned.count} (ledger {ledger.path}). A repeated release is a new one; a new "
                          "budget needs the site's data protection officer")
    spent = epsilon_of(run, s.dp_delta)
    if spent > s.dp_epsilon * 1.001:
        raise BudgetSpent(f"site {local.name} refuses to release its {release.what}: the run's privacy budget (epsilon "
                          f"{s.dp_epsilon:g}, delta {s.dp_delta:g}) would be exceeded ({spent:.3f}; ledger {ledger.path}). "
                          "A repeated step is a new release; a new budget needs the site's data protection officer")
    lifetime = ledger.lifetime_epsilon_with(release, s.dp_delta)
    if lifetime > lifetime_epsilon * 1.001:
        raise BudgetSpent(f"site {local.name} refuses to release its {release.what}: its lifetime privacy budget (epsilon "
                          f"{lifetime_epsilon:g} over every DP release on its data) would be exceeded ({lifetime:.3f}; ledger "
                          f"{ledger.path})")
    ledger.add_release(key, release)
    return {"dp-epsilon": float(spent), "dp-delta": s.dp_delta}


def noise_share(s: FedSettings, n_sites: int) -> float:
    """The share of the planned noise's standard deviation this site adds: all of it, or under secure aggregation
    1/sqrt(threshold), so that the sum of any threshold-many surviving sites, all the server sees, carries all of it
    (distributed DP)."""
    return 1.0 / np.sqrt(s.secagg_threshold_for(n_sites)) if s.secure_aggregation else 1.0


def feature_stats(local, ledger_path: Path, lifetime_epsilon: float = float("inf"),
               share: float = 1.0) -> tuple[np.ndarray, dict[str, float]]:
    """The one release of the noisy feature sum and class counts, (D + K,); ``share``: :func:`noise_share`."""
    sigma, planned = plan_of(local.settings)
    spent = spend(local, ledger_path, planned[0], lifetime_epsilon)
    return _site(local, sigma * share).noisy_stats(), spent


def gradient(local, w: np.ndarray, mean: np.ndarray, ledger_path: Path, lifetime_epsilon: float = float("inf"),
             share: float = 1.0) -> tuple[np.ndarray, dict[str, float]]:
    """One noisy clipped gradient sum of the linear head at ``w`` on the features centred by ``mean``."""
    sigma, planned = plan_of(local.settings)
    spent = spend(local, ledger_path, planned[1], lifetime_epsilon)
    site = _site(local, sigma * share)
    site.centre(mean)
    return site.noisy_gradient(w), spent


def _capped(idx: np.ndarray, groups: list[str], cap: int) -> np.ndarray:
    """A mask over ``idx``: at most ``cap`` images of any patient group (the first ones), so that one patient moves
    at most ``cap`` images of the test counts."""
    seen: dict[str, int] = {}
    keep = np.zeros(len(idx), dtype=bool)
    for pos, i in enumerate(idx):
        seen[groups[i]] = seen.get(groups[i], 0) + 1
        keep[pos] = seen[groups[i]] <= cap
    return keep


def test_counts(local, state: dict[str, torch.Tensor], split: str, ledger_path: Path,
                lifetime_epsilon: float = float("inf")) -> dict[str, Any]:
    """The test split's numbers of correct predictions and of images, with Gaussian noise from the plan, and
    nothing more (every cell of the confusion matrix and every class total withheld). With the patient unit a
    patient's images count at most ``group-block`` times and the noise is scaled by it."""
    from xincept.client.task import local_proba
    from xincept.common.disclosure import SUPPRESSED

    s = local.settings
    if split != "test":
        raise BudgetSpent(f"site {local.name} releases only its test split's counts in a whole-model DP run "
                          f"(asked for {split!r}): anything more would be outside its plan")
    _, planned = plan_of(s)
    counts = planned[-1]
    assert counts.what == COUNTS_WHAT
    spent = spend(local, ledger_path, counts, lifetime_epsilon)
    idx = local.split[split]
    k = len(local.classes)
    cap = s.group_block if s.dp_unit == "patient" else 1
    keep = _capped(idx, local.site.groups, cap) if s.dp_unit == "patient" else np.ones(len(idx), dtype=bool)
    pred = local_proba(local, state, split).argmax(1) if len(idx) else np.zeros(0, dtype=np.int64)
    right = int((pred[keep] == local.site.y[idx][keep]).sum())
    correct, n = noisy_test_counts(right, int(keep.sum()) - right, counts.noise * cap,
                                   np.random.default_rng(secrets.randbits(128)))
    return {"confusion": [SUPPRESSED] * (k * k), "n": n, "correct": correct, "suppressed": k * k,
            "class-total": [SUPPRESSED] * k, "pred-total": [SUPPRESSED] * k, **spent}
