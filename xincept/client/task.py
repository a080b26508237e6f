"""What a hospital computes locally. Science only (no Flower): the ClientApp converts records and calls these.

Nothing returned here is per-image: weights, sums over many images, and aggregate counts.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xincept import __version__
from xincept.common.config import default_cache_dir
from xincept.common.errors import SettingError
from xincept.common.fedconfig import FedSettings
from xincept.common.head import MEMBER_SEED_STRIDE, FusedHead, HeadEnsemble, feature_sums, head_for_state
from xincept.common.model import select
from xincept.common.site import EmbeddedSite, prepare_site, weights_meta
from xincept.common.splits import site_split
from xincept.common.site_counts import site_counts
from xincept.common.train_head import gradient_step, predict_logits, softmax, to_tensors, train_epochs, xgb_data

log = logging.getLogger(__name__)


@dataclass
class LocalSite:
    name: str
    site: EmbeddedSite
    split: dict[str, np.ndarray]
    settings: FedSettings
    standardised: dict[bytes, list[torch.Tensor]] = field(default_factory=dict, repr=False)  # fedsgd's training inputs
    backbone_bytes: int = 0  # the frozen backbones' parameter bytes (the models themselves are released after embedding)

    @property
    def classes(self) -> list[str]:
        return self.site.classes

    def standardised_train(self, head: FusedHead) -> list[torch.Tensor]:
        """``head.standardise`` of the training split, computed once per set of statistics (they stay fixed in a run)."""
        key = b"".join(t.numpy().tobytes() for norm in head.norms for t in (norm.mean, norm.std))
        if key not in self.standardised:
            self.standardised.clear()
            with torch.no_grad():
                self.standardised[key] = head.standardise(to_tensors(select(self.site.feats, self.split["train"])))
        return self.standardised[key]


@functools.lru_cache(maxsize=4)
def load_local_site(name: str, data_dir: str, manifest: str | None, classes: tuple[str, ...] | None, settings: FedSettings,
                    cache_dir: str | None = None, weights_dir: str | None = None, allow_outside: bool = False) -> LocalSite:
    """Check and embed a site's images (through the on-disk cache) and make its grouped split.

    Memoised per process: a SuperNode answering several messages loads its site once.
    """
    cfg = settings.run_config(Path(cache_dir) if cache_dir else None, Path(weights_dir) if weights_dir else None)
    site = prepare_site(Path(data_dir), cfg, list(classes) if classes else None, Path(manifest) if manifest else None,
                        show_progress=False, allow_outside=allow_outside)
    split = site_split(site.y, site.groups, settings.test_fraction, settings.val_fraction, settings.seed, settings.test_fold)
    log.debug("site %s: %d images (train %d, val %d, test %d)", name, len(site.y), *(len(split[k]) for k in ("train", "val", "test")))
    local = LocalSite(name=name, site=site, split=split, settings=settings)
    # every image is embedded: a federation only needs the cached features, so the backbones (~190 MB for the
    # thesis pair) leave this long-lived process; their size is kept for the join report
    local.backbone_bytes = sum(b.param_bytes for b in site.backbones)
    for b in site.backbones:
        b.model = None
    return local


@functools.lru_cache(maxsize=4)
def joining_site(name: str, data_dir: str, manifest: str | None, classes: tuple[str, ...] | None, settings: FedSettings,
                 cache_dir: str | None = None, weights_dir: str | None = None, allow_outside: bool = False) -> LocalSite:
    """What a site needs to answer the join message, without embedding any image: its checked data, its split and its
    backbones' fingerprints (from the cache's descriptors, or the networks built once), so that a site with other
    weights, another input size or other classes is refused in seconds, before any site embeds."""
    from xincept.common.backbones import load_backbones, remember_backbones, remembered_backbones
    from xincept.common.data import require_usable, scan_site

    cfg = settings.run_config(Path(cache_dir) if cache_dir else None, Path(weights_dir) if weights_dir else None)
    data = scan_site(Path(data_dir), list(classes) if classes else None, Path(manifest) if manifest else None,
                     cfg.split.group_block, False, allow_outside)
    require_usable(data)
    backbones = remembered_backbones(cfg.backbone, cfg.cache_dir)
    if backbones is None:
        backbones = load_backbones(cfg.backbone)
        remember_backbones(backbones, cfg.backbone, cfg.cache_dir)
    site = EmbeddedSite(data=data, backbones=backbones, embeddings=None, embed_seconds=0.0)  # type: ignore[arg-type]
    split = site_split(site.y, site.groups, settings.test_fraction, settings.val_fraction, settings.seed, settings.test_fold)
    local = LocalSite(name=name, site=site, split=split, settings=settings)
    local.backbone_bytes = sum(b.param_bytes for b in backbones)
    for b in backbones:
        b.model = None  # the embed phase builds them again only if an image is not cached yet
    return local


def dataset_id(local: LocalSite) -> str:
    """The site's data set, by content: a digest of its images' sha256 (what its privacy ledger is keyed by)."""
    import hashlib

    digest = hashlib.sha256()
    for h in sorted(r.sha256 for r in local.site.data.records):
        digest.update(h.encode())
    return digest.hexdigest()[:24]


def join_info(local: LocalSite) -> dict[str, Any]:
    """What a site tells the server when it joins: versions, fingerprints, classes and counts.

    Class counts below the site's min-cell-count are withheld (-1), like any other small count; in a whole-model DP
    run every count is withheld (each would be a release outside the site's privacy plan).
    """
    from xincept.common.disclosure import SUPPRESSED

    y = local.site.y
    floor = local.settings.min_cell_count
    info = {
        "site": local.name,
        "version": __version__,
        "fingerprints": [f"{b.name}:{b.fingerprint}" for b in local.site.backbones],
        "classes": local.classes,
        "weights": weights_meta(local.site.backbones)["weights"],
        "backbones": json.dumps([b.describe() for b in local.site.backbones]),
        "backbone_bytes": local.backbone_bytes,
    }
    if local.settings.dp_mode == "whole-model":
        return {**info, "counts": [SUPPRESSED] * len(local.classes), "n_train": SUPPRESSED, "n_val": SUPPRESSED,
                "n_test": SUPPRESSED, "n_groups": SUPPRESSED}
    return {
        **info,
        "n_groups": int(local.site.data.report.n_groups),
        "counts": [c if c == 0 or c >= floor else SUPPRESSED for c in (int((y == k).sum()) for k in range(len(local.classes)))],
        "n_train": int(len(local.split["train"])),
        "n_val": int(len(local.split["val"])),
        "n_test": int(len(local.split["test"])),
    }


def train_feature_sums(local: LocalSite) -> list[dict[str, np.ndarray]]:
    """Per-backbone sums (count, sum, sum of squares) of signed-log features over the training split.

    Sums over very few images would come close to releasing those images' features: below the
    disclosure threshold (min-cell-count) the site refuses.
    """
    n = len(local.split["train"])
    if n < local.settings.min_cell_count:
        raise SettingError(f"site {local.name} has only {n} training image(s); feature sums over fewer than "
                           f"{local.settings.min_cell_count} (min-cell-count) would disclose individual images. Add images "
                           "or leave this site out")
    return [feature_sums(f) for f in select(local.site.feats, local.split["train"])]


def _head(local: LocalSite, state: dict[str, torch.Tensor]) -> FusedHead | HeadEnsemble:
    """The head ``state`` describes: one fused head (head rounds) or the finished ensemble (xgb, validate)."""
    cfg = local.settings.run_config().head
    torch.manual_seed(cfg.seed)  # later local epochs draw their dropout masks from this state: runs stay reproducible
    return head_for_state([f.shape[1] for f in local.site.feats], len(local.classes), cfg, state)


def local_train(local: LocalSite, state: dict[str, torch.Tensor], server_round: int,
                ledger: Path | None = None, member: int = 0,
                lifetime_epsilon: float = float("inf")) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """E local epochs from the global head (one full-batch gradient step for fedsgd); returns the head and metrics.

    ``member`` (which head of an ensemble the round trains) changes the dropout masks and minibatch order.

    With ``dp-epsilon`` set, the epochs are DP-SGD and ``ledger`` (a file on this site's disk) records the
    steps spent; the round is refused when it would overspend the run's budget or the site's
    ``lifetime_epsilon`` over every DP training on its data set.
    """
    s = local.settings
    feats = local.site.feats
    head = _head(local, state)
    idx = local.split["train"]
    seed = s.seed * 1_000_003 + server_round * 1009 + sum(map(ord, local.name)) + member * MEMBER_SEED_STRIDE
    if s.dp_epsilon > 0:
        loss, dp = _dp_round(local, head, idx, seed, server_round, ledger, lifetime_epsilon)
        return head.trainable_state(), {"num-examples": int(len(idx)), "train-loss": float(loss), **dp}
    if s.strategy == "fedsgd":
        loss = gradient_step(head, local.standardised_train(head), local.site.y[idx], seed=seed, standardised=True)
        return head.trainable_state(), {"num-examples": int(len(idx)), "train-loss": float(loss)}
    mu = s.proximal_mu if s.strategy == "fedprox" else 0.0
    loss = train_epochs(head, select(feats, idx), local.site.y[idx], s.local_epochs, head.cfg, seed=seed, prox_mu=mu)
    return head.trainable_state(), {"num-examples": int(len(idx)), "train-loss": float(loss)}


def _dp_round(local: LocalSite, head: FusedHead, idx: np.ndarray, seed: int, server_round: int,
              ledger_path: Path | None, lifetime_epsilon: float = float("inf")) -> tuple[float, dict[str, float]]:
    import hashlib

    from xincept.common.dp import BudgetSpent, PrivacyLedger, dp_train_epochs, make_plan, spent_epsilon

    s = local.settings
    plan = make_plan(len(idx), head.cfg.batch_size, s.local_epochs, s.rounds * s.dp_trainings, s.dp_epsilon, s.dp_delta,
                     s.dp_max_grad_norm)
    ledger = PrivacyLedger(ledger_path or default_cache_dir() / "privacy-ledger.json",
                           dataset_id(local) if hasattr(local.site, "data") else local.name)
    key = hashlib.sha256(json.dumps(s.client_flat(), sort_keys=True).encode()).hexdigest()[:16]  # this run's plan
    before = ledger.steps(key)
    after = ledger.lifetime_epsilon(s.dp_delta, (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round))
    if after > lifetime_epsilon * 1.001:
        raise BudgetSpent(f"site {local.name} refuses round {server_round}: its lifetime privacy budget (epsilon "
                          f"{lifetime_epsilon:g} over every DP training on this data set) would be exceeded ({after:.3f}; "
                          f"ledger {ledger.path}). Changing the seed or settings opens no new budget")
    if spent_epsilon(plan, before + plan.steps_per_round) > s.dp_epsilon * 1.001:
        raise BudgetSpent(f"site {local.name} refuses round {server_round}: its privacy budget (epsilon {s.dp_epsilon:g}, delta "
                          f"{s.dp_delta:g}) is spent ({spent_epsilon(plan, before):.3f} used; ledger {ledger.path}). A new budget "
                          "needs a decision by the site's data protection officer, not a restart")
    loss, steps = dp_train_epochs(head, select(local.site.feats, idx), local.site.y[idx], s.local_epochs, head.cfg, plan, seed)
    total = ledger.add(key, steps, plan, server_round)
    return loss, {"dp-epsilon": spent_epsilon(plan, total), "dp-delta": s.dp_delta, "dp-noise_multiplier": plan.noise_multiplier,
                  "dp-max_grad_norm": plan.max_grad_norm, "dp-steps": float(total)}


def split_embeddings(local: LocalSite, state: dict[str, torch.Tensor], split: str) -> tuple[np.ndarray, np.ndarray]:
    """XGBoost's rows (``xgb-features`` of the global head, and its logits as margin with ``xgb-margin head``) and labels
    of one split; they stay at the site."""
    idx = local.split[split]
    s = local.settings
    return xgb_data(_head(local, state), select(local.site.feats, idx), s.xgb_features, s.xgb_margin), local.site.y[idx]


def xgb_histogram(local: LocalSite, state: dict[str, torch.Tensor], address: str, rank: int, world: int,
                  tls_dir: Path | None) -> bytes:
    """This site's part of federated histogram XGBoost on its training split (validation split for early stopping)."""
    from xincept.common.xgb_federated import train_histogram

    x_tr, y_tr = split_embeddings(local, state, "train")
    x_val, y_val = split_embeddings(local, state, "val")
    s = local.settings
    return train_histogram(x_tr, y_tr, x_val, y_val, address, rank, world, len(local.classes), s.xgb_config(), tls_dir,
                           timeout=int(s.xgb_timeout))


def xgb_bagging_round(local: LocalSite, state: dict[str, torch.Tensor], global_raw: bytes | None) -> bytes:
    """One local boosting round (K trees, one per class) on top of the global booster."""
    from xincept.common.xgb_federated import boost_from

    x_tr, y_tr = split_embeddings(local, state, "train")
    return boost_from(global_raw, x_tr, y_tr, len(local.classes), local.settings.xgb_config(), rounds=1)


def local_proba(local: LocalSite, state: dict[str, torch.Tensor], split: str, booster_raw: bytes | None = None) -> np.ndarray:
    """Class probabilities of one split: the XGBoost booster on the head's embeddings, or the head's softmax."""
    head = _head(local, state)
    feats = select(local.site.feats, local.split[split])
    if booster_raw:
        from xincept.common.classifiers import xgb_predict_proba
        from xincept.common.xgb_federated import booster_from_raw

        s = local.settings
        return xgb_predict_proba(booster_from_raw(booster_raw), xgb_data(head, feats, s.xgb_features, s.xgb_margin))
    return softmax(predict_logits(head, feats))


def local_evaluate(local: LocalSite, state: dict[str, torch.Tensor], split: str, booster_raw: bytes | None = None) -> dict[str, Any]:
    """Aggregate counts on one split under the site's disclosure policy (see xincept.common.site_counts)."""
    k = len(local.classes)
    idx = local.split[split]
    proba = local_proba(local, state, split, booster_raw) if len(idx) else np.zeros((0, k))
    return site_counts(local.site.y[idx], proba, k, local.settings.disclosure_policy())


def local_only_counts(local: LocalSite) -> dict[str, Any]:
    """Train a model on this site's data alone and score it on this site's test split (the value of joining).

    The local model never leaves the site; only its aggregate counts do, under the disclosure policy.
    """
    from dataclasses import replace

    from xincept.common.config import HeadConfig
    from xincept.common.model import fit_model

    s = local.settings
    cfg = s.run_config()
    cfg = replace(cfg, head=replace(cfg.head, lr=HeadConfig().lr))  # the centralized recipe, on one site's images
    site = local.site
    model = fit_model(site.feats, None, site.y, local.split["train"], local.split["val"], list(local.classes), cfg)
    if s.xgb_mode == "none":
        model.booster = None
    idx = local.split["test"]
    k = len(local.classes)
    proba = model.predict_proba(select(site.feats, idx)) if len(idx) else np.zeros((0, k))
    return site_counts(site.y[idx], proba, k, s.disclosure_policy())
