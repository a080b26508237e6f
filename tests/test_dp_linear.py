"""Whole-model DP linear head: each release's sensitivity is what the accounting assumes, the noise spends exactly the
budget, and the protocol learns."""

from __future__ import annotations

import numpy as np
import pytest

from xincept.common.dp_linear import (LinearDPConfig, SiteDP, STATS_NORM, STATS_WHAT, centred, clipped_gradient_sum, clipped_stats,
                                      plan_sigma, predict_proba, releases, scale_features, train_linear_dp, unit_index)
from xincept.common.privacy_accounting import epsilon_of


def _data(n: int = 120, d: int = 16, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(0, 1, (k, d)) * 3
    raw = np.abs(centres[y] + rng.normal(0, 1, (n, d))) * 50  # non-negative pooled features of any scale
    return scale_features([raw]), y


def test_scaling_uses_each_image_alone() -> None:
    x, _ = _data()
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0)
    assert np.allclose(scale_features([np.abs(np.random.default_rng(1).normal(size=(5, 16)) * 50)])[:1],
                       scale_features([np.abs(np.random.default_rng(1).normal(size=(5, 16)) * 50)[:1]]))
    two = scale_features([np.ones((3, 4)), np.ones((3, 6)) * 7])
    assert np.allclose(np.linalg.norm(two, axis=1), 1.0)


@pytest.mark.parametrize("unit", ["image", "patient"])
def test_one_unit_moves_the_feature_sum_and_class_counts_by_at_most_their_norm(unit: str) -> None:
    x, y = _data()
    groups = [f"g{i // 3}" for i in range(len(y))]
    units = unit_index(len(y), groups, unit)
    full = clipped_stats(x, y, units, 4)
    assert full.shape == (x.shape[1] + 4,) and full[-4:].sum() <= STATS_NORM * len(np.unique(units)) + 1e-9
    if unit == "image":  # an image's contribution is never clipped: exact mean and counts
        assert np.allclose(full[:-4], x.sum(0)) and np.allclose(full[-4:], np.bincount(y, minlength=4))
    for u in np.unique(units)[:10]:
        keep = units != u
        _, remapped = np.unique(units[keep], return_inverse=True)
        without = clipped_stats(x[keep], y[keep], remapped, 4)
        assert np.linalg.norm(full - without) <= STATS_NORM + 1e-9


@pytest.mark.parametrize("unit", ["image", "patient"])
def test_one_unit_moves_the_gradient_sum_by_at_most_the_clipping_norm(unit: str) -> None:
    x, y = _data()
    xc = centred(x, x.mean(0))
    units = unit_index(len(y), [f"g{i // 4}" for i in range(len(y))], unit)
    w = np.random.default_rng(2).normal(0, 1, (xc.shape[1], 4))
    full = clipped_gradient_sum(w, xc, y, units, 0.5)
    assert full.shape == (xc.shape[1] - 1, 4)  # the weights only: the bias is fixed
    for u in np.unique(units)[:10]:
        keep = units != u
        _, remapped = np.unique(units[keep], return_inverse=True)
        assert np.linalg.norm(full - clipped_gradient_sum(w, xc[keep], y[keep], remapped, 0.5)) <= 0.5 + 1e-9


def test_unclipped_gradient_is_the_cross_entropy_gradient_of_the_weights() -> None:
    import torch

    x, y = _data(n=20)
    xc = centred(x, x.mean(0))
    w = np.random.default_rng(3).normal(0, 0.1, (xc.shape[1], 4))
    wt = torch.tensor(w, requires_grad=True)
    torch.nn.functional.cross_entropy(torch.tensor(xc) @ wt, torch.tensor(y), reduction="sum").backward()
    assert np.allclose(clipped_gradient_sum(w, xc, y, np.arange(len(y)), 1e6), wt.grad.numpy()[:-1])


def test_the_bias_is_the_log_prior_of_the_released_counts_and_stays_fixed() -> None:
    from xincept.common.dp_linear import ServerDP

    x, y = _data(n=200)
    server = ServerDP(x.shape[1], 4, LinearDPConfig())
    mean = server.set_stats(clipped_stats(x, y, np.arange(len(y)), 4))
    assert np.allclose(mean, x.mean(0)) and server.n_hat == len(y)
    prior = np.log(np.bincount(y, minlength=4) / len(y))
    assert np.allclose(server.w[-1], prior)
    server.step(np.ones((x.shape[1], 4)))
    assert np.allclose(server.w[-1], prior) and not np.allclose(server.w[:-1], 0)


@pytest.mark.parametrize("epsilon", [1.0, 3.0, 8.0])
def test_the_planned_noise_spends_the_budget_over_every_release(epsilon: float) -> None:
    cfg = LinearDPConfig(steps=50)
    sigma = plan_sigma(cfg, epsilon, 1e-5)
    spent = epsilon_of(releases(cfg, sigma, cfg.steps), 1e-5)
    assert spent <= epsilon and spent == pytest.approx(epsilon, rel=0.02)
    assert {r.what for r in releases(cfg, sigma, cfg.steps)} == {STATS_WHAT, "clipped gradient sums of the linear head"}


def test_the_protocol_learns_and_noise_costs_accuracy_not_correctness() -> None:
    all_x, all_y = _data(n=1600, seed=4)
    x, y, test_x, test_y = all_x[:1200], all_y[:1200], all_x[1200:], all_y[1200:]
    cfg = LinearDPConfig(steps=60, lr=1.0)

    def accuracy(epsilon: float | None) -> float:
        sigma = plan_sigma(cfg, epsilon, 1e-5) if epsilon else 0.0
        sites = [SiteDP(x[i::4], y[i::4], np.arange(len(y[i::4])), 4, cfg, sigma, np.random.default_rng(i)) for i in range(4)]
        w, mean = train_linear_dp(sites, 4)
        return float((predict_proba(w, mean, test_x).argmax(1) == test_y).mean())

    plain, private = accuracy(None), accuracy(8.0)
    assert plain > 0.9 and private > 0.6


def test_releases_summed_by_secure_aggregation_train_the_same_model() -> None:
    """Distributed DP: the server steps on the securely aggregated sum; without noise the model equals the plain sum's
    within quantisation."""
    from xincept.common.dp_linear import plain_sum
    from xincept.common.secagg import secure_sum

    all_x, all_y = _data(n=400, seed=6)
    cfg = LinearDPConfig(steps=10, lr=1.0)

    def weights(aggregate) -> np.ndarray:  # noqa: ANN001
        sites = [SiteDP(all_x[i::3], all_y[i::3], np.arange(len(all_y[i::3])), 4, cfg, 0.0, np.random.default_rng(i))
                 for i in range(3)]
        return train_linear_dp(sites, 4, aggregate)[0]

    assert np.allclose(weights(plain_sum), weights(secure_sum), atol=1e-3)
