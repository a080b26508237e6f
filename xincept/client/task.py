"""What a hospital computes locally. Science only (no Flower): the ClientApp converts records and calls these.

Nothing returned here is per-image: weights, sums over many images, and aggregate counts.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xincept import __version__
from xincept.common.fedconfig import FedSettings
from xincept.common.head import FusedHead, feature_sums
from xincept.common.model import select
from xincept.common.site import EmbeddedSite, prepare_site
from xincept.common.splits import site_split
from xincept.common.train_head import embed_features, predict_logits, train_epochs

log = logging.getLogger(__name__)


@dataclass
class LocalSite:
    name: str
    site: EmbeddedSite
    split: dict[str, np.ndarray]
    settings: FedSettings

    @property
    def classes(self) -> list[str]:
        return self.site.classes


@functools.lru_cache(maxsize=4)
def load_local_site(name: str, data_dir: str, manifest: str | None, classes: tuple[str, ...] | None, settings: FedSettings,
                    cache_dir: str | None = None, weights_dir: str | None = None) -> LocalSite:
    """Check and embed a site's images (through the on-disk cache) and make its grouped split.

    Memoised per process: a SuperNode answering several messages loads its site once.
    """
    cfg = settings.run_config(Path(cache_dir) if cache_dir else None, Path(weights_dir) if weights_dir else None)
    site = prepare_site(Path(data_dir), cfg, list(classes) if classes else None, Path(manifest) if manifest else None,
                        show_progress=False)
    split = site_split(site.y, site.groups, settings.test_fraction, settings.val_fraction, settings.seed)
    log.info("site %s: %d images (train %d, val %d, test %d)", name, len(site.y), *(len(split[k]) for k in ("train", "val", "test")))
    return LocalSite(name=name, site=site, split=split, settings=settings)


def join_info(local: LocalSite) -> dict[str, Any]:
    """What a site tells the server when it joins: versions, fingerprints, classes and counts."""
    y = local.site.y
    return {
        "site": local.name,
        "version": __version__,
        "fingerprints": [f"{b.name}:{b.fingerprint}" for b in local.site.backbones],
        "classes": local.classes,
        "weights": local.site.backbones[0].weights.split(":")[0],
        "backbones": json.dumps([b.describe() for b in local.site.backbones]),
        "backbone_bytes": int(sum(p.numel() * p.element_size() for b in local.site.backbones for p in b.model.parameters())),
        "n_groups": int(local.site.data.report.n_groups),
        "counts": [int((y == k).sum()) for k in range(len(local.classes))],
        "n_train": int(len(local.split["train"])),
        "n_val": int(len(local.split["val"])),
        "n_test": int(len(local.split["test"])),
    }


def train_feature_sums(local: LocalSite) -> list[dict[str, np.ndarray]]:
    """Per-backbone sums (count, sum, sum of squares) of signed-log features over the training split."""
    return [feature_sums(f) for f in select(local.site.feats, local.split["train"])]


def new_head_for(in_dims: list[int], num_classes: int, settings: FedSettings) -> FusedHead:
    cfg = settings.run_config().head
    torch.manual_seed(cfg.seed)
    return FusedHead(in_dims, num_classes, cfg)


def _head(local: LocalSite, state: dict[str, torch.Tensor]) -> FusedHead:
    feats = local.site.feats
    head = new_head_for([f.shape[1] for f in feats], len(local.classes), local.settings)
    head.load_state_dict(state)
    head.eval()
    return head


def local_train(local: LocalSite, state: dict[str, torch.Tensor], server_round: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """E local epochs from the global head; returns the updated head and training metrics."""
    s = local.settings
    feats = local.site.feats
    head = _head(local, state)
    idx = local.split["train"]
    seed = s.seed * 1_000_003 + server_round * 1009 + sum(map(ord, local.name))
    mu = s.proximal_mu if s.strategy == "fedprox" else 0.0
    loss = train_epochs(head, select(feats, idx), local.site.y[idx], s.local_epochs, head.cfg, seed=seed, prox_mu=mu)
    return head.trainable_state(), {"num-examples": int(len(idx)), "train-loss": float(loss)}


def split_embeddings(local: LocalSite, state: dict[str, torch.Tensor], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Shared embeddings (global head) and labels of one split; they stay at the site."""
    idx = local.split[split]
    return embed_features(_head(local, state), select(local.site.feats, idx)), local.site.y[idx]


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


def local_evaluate(local: LocalSite, state: dict[str, torch.Tensor], split: str, booster_raw: bytes | None = None) -> dict[str, Any]:
    """Aggregate counts on one split: number of images, summed loss, confusion matrix (flattened).

    With ``booster_raw`` the XGBoost booster on the head's embeddings is scored, otherwise the head's softmax.
    """
    feats = local.site.feats
    head = _head(local, state)
    idx = local.split[split]
    k = len(local.classes)
    if len(idx) == 0:
        return {"num-examples": 0, "loss-sum": 0.0, "confusion": [0] * (k * k)}
    if booster_raw:
        from xincept.common.classifiers import xgb_predict_proba
        from xincept.common.xgb_federated import booster_from_raw

        proba = xgb_predict_proba(booster_from_raw(booster_raw), embed_features(head, select(feats, idx)))
        logits = torch.log(torch.as_tensor(proba, dtype=torch.float32).clamp_min(1e-7))
    else:
        logits = torch.as_tensor(predict_logits(head, select(feats, idx)))
    y = torch.as_tensor(local.site.y[idx])
    loss = float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y.numpy(), logits.argmax(1).numpy()), 1)
    out = {"num-examples": int(len(idx)), "loss-sum": loss, "confusion": cm.reshape(-1).tolist()}
    from xincept.common.metrics import auc_ovr

    auc = auc_ovr(y.numpy(), torch.softmax(logits, 1).numpy(), k)
    if auc is not None:
        out["auc-ovr"] = auc  # computed at the site: a single number leaves it
    return out
