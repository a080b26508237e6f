"""Aggregation strategies (Flower's FedAvg family) over the fused head, and their resumable state."""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, FedTrimmedAvg, Krum

from xincept.common.fedconfig import FedSettings


def make_strategy(settings: FedSettings, n_sites: int) -> FedAvg:
    """FedAvg (default), FedProx, FedAdam, or a robust rule (trimmed mean, Krum); weighted by training images."""
    common = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=n_sites, min_evaluate_nodes=n_sites,
                  min_available_nodes=n_sites, weighted_by_key="num-examples")
    if settings.strategy == "fedprox":
        return FedProx(proximal_mu=settings.proximal_mu, **common)
    if settings.strategy == "fedadam":
        return FedAdam(eta=settings.server_lr, eta_l=settings.lr, **common)
    if settings.strategy == "trimmed-mean":
        return FedTrimmedAvg(beta=settings.trim_beta, **common)
    if settings.strategy == "krum":
        return Krum(num_malicious_nodes=settings.krum_malicious, **common)
    return FedAvg(**common)


def strategy_state(strategy: FedAvg) -> dict[str, dict[str, np.ndarray]]:
    """Server optimiser moments (FedAdam m_t, v_t) to checkpoint; empty for FedAvg and FedProx."""
    return {name: dict(getattr(strategy, name)) for name in ("m_t", "v_t") if getattr(strategy, name, None)}


def restore_strategy_state(strategy: FedAvg, state: dict[str, dict[str, np.ndarray]]) -> None:
    for name, value in state.items():
        setattr(strategy, name, {k: np.asarray(v) for k, v in value.items()})
