"""Aggregation strategies (Flower's FedAvg family) over the fused head, and their resumable state."""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import (DifferentialPrivacyServerSideFixedClipping, FedAdam, FedAvg, FedProx, FedTrimmedAvg, Krum,
                                     Strategy)

from xincept.common.fedconfig import FedSettings


FEDSGD_TAU = 1e-8


def make_strategy(settings: FedSettings, n_sites: int) -> Strategy:
    """The aggregation rule, wrapped in Flower's server-side fixed-clipping DP when ``central-dp-noise`` > 0."""
    base = _base_strategy(settings, n_sites)
    if settings.central_dp_noise > 0:
        return DifferentialPrivacyServerSideFixedClipping(base, noise_multiplier=settings.central_dp_noise,
                                                         clipping_norm=settings.central_dp_clip, num_sampled_clients=n_sites)
    return base


def inner(strategy: Strategy) -> Strategy:
    """The aggregation rule inside a DP wrapper (or the strategy itself)."""
    return getattr(strategy, "strategy", strategy)


def set_current(strategy: Strategy, arrays: ArrayRecord) -> None:
    """Tell the strategy the global arrays that this round's updates start from (our loop calls aggregate_train only)."""
    if isinstance(strategy, DifferentialPrivacyServerSideFixedClipping):
        strategy.current_arrays = arrays
    base = inner(strategy)
    if hasattr(base, "current_arrays"):  # FedOpt family: the arrays the deltas are taken against
        base.current_arrays = {k: a.numpy() for k, a in arrays.items()}


def _base_strategy(settings: FedSettings, n_sites: int) -> FedAvg:
    """FedSGD with server Adam (default), FedAvg, FedProx, FedAdam, or a robust rule (trimmed mean, Krum); weighted by training images."""
    common = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=n_sites, min_evaluate_nodes=n_sites,
                  min_available_nodes=n_sites, weighted_by_key="num-examples")
    if settings.strategy == "fedprox":
        return FedProx(proximal_mu=settings.proximal_mu, **common)
    if settings.strategy == "fedsgd":  # sites send w - g (one full-batch gradient step), so the weighted mean of the
        # deltas is minus the gradient over every site's training images, and FedAdam's step is centralized full-batch
        # Adam. tau ~ 0 as in Adam: Flower's default 1e-3 dwarfs these gradients (about 1e-4) and stalls training.
        return FedAdam(eta=settings.server_lr, eta_l=1.0, tau=FEDSGD_TAU, **common)
    if settings.strategy == "fedadam":
        return FedAdam(eta=settings.server_lr, eta_l=settings.lr, **common)
    if settings.strategy == "trimmed-mean":
        return FedTrimmedAvg(beta=settings.trim_beta, **common)
    if settings.strategy == "krum":
        return Krum(num_malicious_nodes=settings.krum_malicious, **common)
    return FedAvg(**common)


def set_round(strategy: Strategy, settings: FedSettings, server_round: int) -> None:
    """fedsgd's server step for this round: ``server-lr``, or with ``server-lr-schedule = "cosine"`` a decay to 0.

    Measured on all4 (Dirichlet 0.5, folds 0 and 1), the cosine decay lost 2 to 3 points against the constant
    step, so constant is the default; with it the head can fall apart late in a run (two folds, after
    round 70), which best-round selection on validation accuracy leaves behind.
    """
    if settings.strategy == "fedsgd" and settings.server_lr_schedule == "cosine":
        inner(strategy).eta = settings.server_lr * 0.5 * (1 + math.cos(math.pi * (server_round - 1) / settings.rounds))


def strategy_state(strategy: Strategy) -> dict[str, dict[str, np.ndarray]]:
    """Server optimiser moments (FedAdam m_t, v_t) to checkpoint; empty for FedAvg and FedProx."""
    base = inner(strategy)
    return {name: dict(getattr(base, name)) for name in ("m_t", "v_t") if getattr(base, name, None)}


def restore_strategy_state(strategy: Strategy, state: dict[str, dict[str, np.ndarray]]) -> None:
    for name, value in state.items():
        setattr(inner(strategy), name, {k: np.asarray(v) for k, v in value.items()})
