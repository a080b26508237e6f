"""Train the fused head on cached features: Adam, optional Algorithm-1 L2 and early stopping, label smoothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from xincept.common.classifiers import XGBInput
from xincept.common.config import XGB_MARGINS, HeadConfig
from xincept.common.head import FusedHead, feature_sums, sums_to_mean_std

log = logging.getLogger(__name__)


@dataclass
class TrainHistory:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = -1


def to_tensors(feats: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.as_tensor(f, dtype=torch.float32) for f in feats]


def new_head(feats: list[np.ndarray], num_classes: int, cfg: HeadConfig) -> FusedHead:
    """A head whose input standardisation is fitted on ``feats`` (training features)."""
    torch.manual_seed(cfg.seed)
    head = FusedHead([f.shape[1] for f in feats], num_classes, cfg)
    head.set_standardization([sums_to_mean_std(feature_sums(f)) for f in feats])
    return head


def train_epochs(head: FusedHead, feats: list[np.ndarray], y: np.ndarray, epochs: int, cfg: HeadConfig, seed: int = 0,
                 optimizer: torch.optim.Optimizer | None = None, prox_mu: float = 0.0) -> float:
    """Run ``epochs`` epochs of minibatch Adam; return the mean loss of the last epoch.

    With ``prox_mu > 0`` the FedProx term mu/2 * ||w - w_start||^2 keeps local weights near the global ones.
    """
    anchor = [p.detach().clone() for p in head.parameters()] if prox_mu > 0 else None
    xs, yt = to_tensors(feats), torch.as_tensor(y, dtype=torch.long)
    opt = optimizer or torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    gen = torch.Generator().manual_seed(seed)
    head.train()
    last = float("nan")
    for _ in range(epochs):
        perm = torch.randperm(len(yt), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = loss_fn(head([x[idx] for x in xs]), yt[idx])
            opt.zero_grad()
            total_loss = loss + head.l2_penalty()
            if anchor is not None:
                total_loss = total_loss + prox_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(head.parameters(), anchor))
            total_loss.backward()
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        last = total / max(count, 1)
    head.eval()
    return last


def gradient_step(head: FusedHead, feats: list[np.ndarray] | list[torch.Tensor], y: np.ndarray, seed: int = 0,
                  standardised: bool = False) -> float:
    """One step w <- w - g, with g the gradient of the mean loss (plus Algorithm 1's L2) over all of ``feats``.

    Federated SGD: the example-weighted mean of the sites' results is w minus the gradient over every site's
    images, exactly what a centralized full-batch step would compute; the server's optimiser takes the step.
    Returns the loss before the step. ``standardised``: ``feats`` are tensors from ``head.standardise``.
    """
    xs, yt = (feats if standardised else to_tensors(feats)), torch.as_tensor(y, dtype=torch.long)
    torch.manual_seed(seed)  # the dropout mask
    head.train()
    loss = nn.functional.cross_entropy(head(xs, standardised=standardised), yt, label_smoothing=head.cfg.label_smoothing)
    head.zero_grad()
    (loss + head.l2_penalty()).backward()
    with torch.no_grad():
        for p in head.parameters():
            p -= p.grad
    head.eval()
    return float(loss.detach())


@torch.no_grad()
def _batched(fn, head: FusedHead, feats: list[np.ndarray], batch: int) -> np.ndarray:
    """``fn`` (a method of the head taking one tensor per backbone) over ``feats`` in batches, in eval mode."""
    head.eval()
    xs = to_tensors(feats)
    return torch.cat([fn([x[i : i + batch] for x in xs]) for i in range(0, len(xs[0]), batch)]).numpy()


def predict_logits(head: FusedHead, feats: list[np.ndarray], batch: int = 4096) -> np.ndarray:
    return _batched(head, head, feats, batch)


def embed_features(head: FusedHead, feats: list[np.ndarray], batch: int = 4096) -> np.ndarray:
    """Shared embeddings (N, 64) of pooled features."""
    return _batched(head.embed, head, feats, batch)


XGB_INPUTS = ("embedding", "branches", "logits", "fused")  # what XGBoost may be trained on (XGBConfig.features)


def xgb_inputs(head: FusedHead, feats: list[np.ndarray], kind: str = "embedding", batch: int = 4096) -> np.ndarray:
    """XGBoost's input for pooled features: the 64-wide fusion embedding (``embedding``), the branches' 64-wide
    activations side by side (``branches``), the head's logits (``logits``) or the raw pooled features (``fused``)."""
    if kind == "fused":
        return np.concatenate(feats, axis=1)
    methods = {"embedding": head.embed, "branches": head.branch_activations, "logits": head}
    if kind not in methods:
        raise ValueError(f"XGBoost input {kind!r}: choose one of {XGB_INPUTS}")
    return _batched(methods[kind], head, feats, batch)


def xgb_data(head: FusedHead, feats: list[np.ndarray], kind: str = "branches", margin: str = "none") -> XGBInput:
    """XGBoost's rows for pooled features: :func:`xgb_inputs` of ``kind`` and, with ``margin="head"``, the head's
    logits as the rows' base margin (XGBoost boosts from the head's prediction)."""
    if margin not in XGB_MARGINS:
        raise ValueError(f"XGBoost margin {margin!r}: choose head or none")
    return XGBInput(xgb_inputs(head, feats, kind), predict_logits(head, feats) if margin == "head" else None)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_head(train_feats: list[np.ndarray], y_train: np.ndarray, val_feats: list[np.ndarray], y_val: np.ndarray,
             num_classes: int, cfg: HeadConfig) -> tuple[FusedHead, TrainHistory]:
    """Train a new head for ``cfg.max_epochs`` epochs; validation is scored after every epoch.

    ``cfg.patience`` 0 (the default recipe): the last epoch's weights are kept. Otherwise early stopping: the best
    epoch has the highest validation accuracy, ties broken by lower validation loss (on grouped splits the
    validation loss of this small head keeps rising, over-confidence, long after accuracy peaks, so selecting on
    loss alone stops within the first few epochs), and training stops after ``patience`` epochs without a better one.
    """
    head = new_head(train_feats, num_classes, cfg)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    hist = TrainHistory()
    best: tuple[float, float] = (-1.0, float("-inf"))
    best_state, bad = head.trainable_state(), 0
    yv = torch.as_tensor(y_val, dtype=torch.long)
    for epoch in range(cfg.max_epochs):
        hist.train_loss.append(train_epochs(head, train_feats, y_train, 1, cfg, seed=cfg.seed * 100003 + epoch, optimizer=opt))
        if not len(yv):
            continue
        logits = torch.as_tensor(predict_logits(head, val_feats))
        val_loss = float(nn.functional.cross_entropy(logits, yv))
        val_acc = float((logits.argmax(1) == yv).float().mean())
        hist.val_loss.append(val_loss)
        hist.val_accuracy.append(val_acc)
        if cfg.patience == 0:
            continue
        if (val_acc, -val_loss) > best:
            best, best_state, bad, hist.best_epoch = (val_acc, -val_loss), head.trainable_state(), 0, epoch
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if cfg.patience == 0 or not len(yv):
        hist.best_epoch = len(hist.train_loss) - 1  # the last epoch is the model
    else:
        head.load_state_dict(best_state)
    head.eval()
    log.debug("head: kept epoch %d of %d", hist.best_epoch + 1, len(hist.train_loss))
    return head, hist
