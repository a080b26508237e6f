"""The fused dense head of thesis Algorithm 1, with input standardisation.

Per branch: Dense(64, act) -> Dense(K, linear, L2 0.01).
Fusion: concat(branch outputs) -> Dense(128, act) -> Dense(64, act) -> Dense(K, linear, L2 0.01).
The 64-wide penultimate fusion layer is the shared embedding.

Random-weight backbones give pooled features around 1e9, so each branch first applies a signed
log transform and standardises with per-feature mean and std. Those statistics come from
sums (count, sum, sum of squares), which a federation can add up across sites.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from xincept.common.config import HeadConfig


def signed_log(x: torch.Tensor | np.ndarray):
    """sign(x) * log(1 + |x|): compresses the huge range of random-weight features."""
    if isinstance(x, np.ndarray):
        return np.sign(x) * np.log1p(np.abs(x))
    return torch.sign(x) * torch.log1p(torch.abs(x))


def feature_sums(x: np.ndarray) -> dict[str, np.ndarray]:
    """Sufficient statistics of signed-log features: what a site may share, never the features."""
    z = signed_log(x.astype(np.float64))
    return {"n": np.array([z.shape[0]], dtype=np.float64), "sum": z.sum(0), "sumsq": (z * z).sum(0)}


def add_sums(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.sum([p[k] for p in parts], axis=0) for k in ("n", "sum", "sumsq")}


def sums_to_mean_std(sums: dict[str, np.ndarray], eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    n = float(sums["n"][0])
    mean = sums["sum"] / n
    var = np.maximum(sums["sumsq"] / n - mean**2, 0.0)
    return mean.astype(np.float32), np.sqrt(var + eps).astype(np.float32)


class Standardize(nn.Module):
    """(signed_log(x) - mean) / std with statistics held as buffers (saved, not trained)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (signed_log(x) - self.mean) / self.std


def _act(name: str) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.ReLU()


class FusedHead(nn.Module):
    """Takes one pooled-feature tensor per backbone, returns class logits.

    Args:
        in_dims: pooled feature width of each backbone (2,048 for Xception and InceptionV3).
        num_classes: K, the number of classes.
    """

    def __init__(self, in_dims: list[int], num_classes: int, cfg: HeadConfig = HeadConfig()) -> None:
        super().__init__()
        self.in_dims, self.num_classes, self.cfg = list(in_dims), num_classes, cfg
        self.norms = nn.ModuleList(Standardize(d) for d in in_dims)
        self.drop = nn.Dropout(cfg.dropout)  # on standardised inputs; identity at the default 0
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(d, cfg.branch_width), _act(cfg.activation), nn.Linear(cfg.branch_width, num_classes))
            for d in in_dims
        )
        w1, w2 = cfg.fusion_widths
        self.fusion = nn.Sequential(
            nn.Linear(num_classes * len(in_dims), w1), _act(cfg.activation), nn.Linear(w1, w2), _act(cfg.activation)
        )
        self.classifier = nn.Linear(w2, num_classes)

    @property
    def embedding_dim(self) -> int:
        return self.cfg.fusion_widths[1]

    def embed(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The shared embedding: (B, 64)."""
        outs = [branch(self.drop(norm(x))) for norm, branch, x in zip(self.norms, self.branches, feats)]  # K each
        return self.fusion(torch.cat(outs, dim=1))  # (B, K * n_branches) -> (B, 64)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.embed(feats))

    def l2_penalty(self) -> torch.Tensor:
        """Keras-style L2 (0.01 * sum w^2) on the linear K-wide layers, as in Algorithm 1."""
        layers = [b[-1] for b in self.branches] + [self.classifier]
        return self.cfg.l2 * sum((layer.weight**2).sum() for layer in layers)

    def set_standardization(self, stats: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for norm, (mean, std) in zip(self.norms, stats):
            norm.set_stats(mean, std)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What federated rounds exchange: every parameter and buffer of the head."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}
