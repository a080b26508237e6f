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


def sums_to_mean_std(sums: dict[str, np.ndarray], rel_floor: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std from summed statistics.

    A feature's variance is floored at ``rel_floor`` times the median positive variance of its backbone (so a
    constant feature does not divide by zero), never at an absolute epsilon: random-weight Xception features vary
    by about 1e-4, so an absolute 1e-6 added to their variance of 1e-8 shrank that whole branch tenfold beside
    InceptionV3's unit-scale inputs, and the fused head learnt mostly from the weaker backbone (bench/ablation.py).
    """
    n = float(sums["n"][0])
    mean = sums["sum"] / n
    var = np.maximum(sums["sumsq"] / n - mean**2, 0.0)
    positive = var[var > 0]
    floor = rel_floor * float(np.median(positive)) if positive.size else 1.0
    return mean.astype(np.float32), np.sqrt(np.maximum(var, floor)).astype(np.float32)


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

    def standardise(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each branch's standardised input; fixed while the statistics are, so a site can keep it between rounds."""
        return [norm(x) for norm, x in zip(self.norms, feats)]

    def embed(self, feats: list[torch.Tensor], standardised: bool = False) -> torch.Tensor:
        """The shared embedding: (B, 64). ``standardised``: ``feats`` already went through :meth:`standardise`."""
        zs = feats if standardised else self.standardise(feats)
        outs = [branch(self.drop(z)) for branch, z in zip(self.branches, zs)]  # K each
        return self.fusion(torch.cat(outs, dim=1))  # (B, K * n_branches) -> (B, 64)

    def forward(self, feats: list[torch.Tensor], standardised: bool = False) -> torch.Tensor:
        return self.classifier(self.embed(feats, standardised))

    def branch_activations(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Each branch's 64-wide hidden activations side by side: (B, 64 * n_branches), before the K-wide layers."""
        return torch.cat([branch[:2](self.drop(z)) for branch, z in zip(self.branches, self.standardise(feats))], dim=1)

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


class HeadEnsemble(nn.Module):
    """Several fused heads trained apart (different initialisations and dropout masks), used as one model.

    ``forward`` returns log(mean of the members' softmax), so a softmax of it averages the members'
    probabilities; ``embed`` concatenates the members' embeddings (XGBoost's input, ``64 * members`` wide).
    Each member is trained and exchanged on its own; only the finished model holds them all.
    """

    def __init__(self, in_dims: list[int], num_classes: int, cfg: HeadConfig = HeadConfig(), members: int = 2) -> None:
        super().__init__()
        if members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {members}")
        self.in_dims, self.num_classes, self.cfg = list(in_dims), num_classes, cfg
        self.members = nn.ModuleList(FusedHead(in_dims, num_classes, cfg) for _ in range(members))

    @property
    def embedding_dim(self) -> int:
        return sum(m.embedding_dim for m in self.members)

    def embed(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([m.embed(feats) for m in self.members], dim=1)

    def branch_activations(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([m.branch_activations(feats) for m in self.members], dim=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        logp = torch.stack([torch.log_softmax(m(feats), dim=1) for m in self.members])  # (members, B, K)
        return torch.logsumexp(logp, dim=0) - float(np.log(len(self.members)))

    def set_standardization(self, stats: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for m in self.members:
            m.set_standardization(stats)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}


def member_count(state: dict[str, torch.Tensor]) -> int:
    """How many heads a state holds: 1 for a :class:`FusedHead`, else the members of a :class:`HeadEnsemble`."""
    ids = {int(k.split(".")[1]) for k in state if k.startswith("members.")}
    return len(ids) if ids else 1


def ensemble_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The state of the model made of ``states`` (one head's state as it is; several as a :class:`HeadEnsemble`)."""
    if len(states) == 1:
        return dict(states[0])
    return {f"members.{i}.{k}": v for i, s in enumerate(states) for k, v in s.items()}


def head_for_state(in_dims: list[int], num_classes: int, cfg: HeadConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    """A :class:`FusedHead` or :class:`HeadEnsemble` shaped for ``state``, with ``state`` loaded, in eval mode."""
    from xincept.common.dp_linear import LinearProbe, is_probe_state

    if is_probe_state(state):  # whole-model DP's linear head
        probe = LinearProbe(in_dims, num_classes, cfg)
        probe.load_state_dict(state)
        return probe.eval()
    k = member_count(state)
    head = FusedHead(in_dims, num_classes, cfg) if k == 1 else HeadEnsemble(in_dims, num_classes, cfg, k)
    head.load_state_dict(state)
    head.eval()
    return head


MEMBER_SEED_STRIDE = 7919  # head M of an ensemble: initialisation and dropout seeds shifted by M x this prime


def new_head_for(in_dims: list[int], num_classes: int, cfg: HeadConfig, member: int = 0) -> "FusedHead":
    """A fresh head (the server's first global head, the same at every site); ``member`` > 0 gives another head of
    an ensemble its own initialisation."""
    torch.manual_seed(cfg.seed + MEMBER_SEED_STRIDE * member)
    return FusedHead(in_dims, num_classes, cfg)
