"""The whole-model DP accounting against independent computations: Opacus' RDP accountant for the Gaussian steps,
Opacus' numerical privacy-loss (PRV) accountant for the exact composition of Gaussian releases, a numerical Rényi
divergence of two Laplace densities for the count releases, and a brute-force composition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xincept.common.privacy_accounting import (ORDERS, Release, calibrate_sigma, epsilon_by_rdp, epsilon_of, gaussian_delta,
                                               rdp_to_dp, statement)


@pytest.mark.parametrize("sigma,steps", [(1.0, 1), (4.0, 60), (11.6, 60), (0.8, 300)])
def test_gaussian_steps_match_opacus_rdp_accountant(sigma: float, steps: int) -> None:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [float(a) for a in ORDERS]
    theirs = compute_rdp(q=1.0, noise_multiplier=sigma, steps=steps, orders=orders)
    ours = Release("gaussian", sigma, steps, "steps").rdp()
    assert np.allclose(ours, theirs, rtol=1e-9)
    eps_theirs, _ = get_privacy_spent(orders=orders, rdp=theirs, delta=1e-5)
    assert epsilon_by_rdp([Release("gaussian", sigma, steps, "steps")], 1e-5) == pytest.approx(eps_theirs, rel=1e-9)


@pytest.mark.parametrize("releases", [
    [Release("gaussian", 1.5, 1, "one count")],
    [Release("gaussian", 15.0, 112, "steps")],
    [Release("gaussian", 6.0, 160, "steps"), Release("gaussian", 3.0, 1, "sums"), Release("gaussian", 9.0, 1, "counts")],
])
def test_gaussian_releases_compose_exactly_as_opacus_prv_accountant_computes(releases: list[Release]) -> None:
    """All-Gaussian releases (full batch: sample rate 1) are one Gaussian mechanism; Opacus' PRV accountant composes
    their privacy-loss distributions numerically, independently of the closed form, and agrees within its error."""
    import warnings

    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = [(r.noise, 1.0, r.count) for r in releases]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # log(0) inside its sample-rate-1 branch: harmless
        theirs = acc.get_epsilon(delta=1e-5, eps_error=0.005)
    ours = epsilon_of(releases, 1e-5)
    assert ours == pytest.approx(theirs, abs=0.006)
    assert gaussian_delta(ours, sum(r.count / r.noise**2 for r in releases) ** 0.5) == pytest.approx(1e-5, rel=1e-6)
    assert ours < epsilon_by_rdp(releases, 1e-5) < ours * 1.12  # RDP's conversion is an upper bound, 6-10% above

def _laplace_renyi_numeric(eps: float, alpha: float) -> float:
    """D_alpha(Lap(0, 1/eps) || Lap(1, 1/eps)) by numerical integration on a fine grid."""
    b = 1.0 / eps
    x = np.linspace(-60 * b, 60 * b + 1, 2_000_001)
    log_p = -np.abs(x) / b - np.log(2 * b)
    log_q = -np.abs(x - 1) / b - np.log(2 * b)
    log_f = alpha * log_p + (1 - alpha) * log_q  # in logs: p^alpha q^(1-alpha) under- and overflows at high orders
    top = log_f.max()
    return float((top + np.log(np.trapezoid(np.exp(log_f - top), x))) / (alpha - 1))


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 8.0, 32.0])
def test_laplace_rdp_matches_a_numerical_renyi_divergence(eps: float, alpha: float) -> None:
    ours = Release("laplace", eps, 1, "counts").rdp(np.array([alpha]))[0]
    assert ours == pytest.approx(_laplace_renyi_numeric(eps, alpha), rel=1e-3, abs=1e-6)


def test_composition_adds_rdp_order_by_order_and_converts_once() -> None:
    releases = [Release("gaussian", 20.0, 1, "count"), Release("gaussian", 6.0, 40, "gradients"),
                Release("laplace", 0.3, 2, "validation counts")]
    total = sum(r.rdp() for r in releases)
    # brute force over the same orders: Balle et al. 2020, Theorem 21
    brute = min(rdp + math.log1p(-1 / a) - (math.log(1e-5) + math.log(a)) / (a - 1) for a, rdp in zip(ORDERS, total))
    assert epsilon_of(releases, 1e-5) == pytest.approx(brute)
    # composing costs more than any part alone, less than the sum of the parts' epsilons
    parts = [epsilon_of([r], 1e-5) for r in releases]
    assert max(parts) < epsilon_of(releases, 1e-5) < sum(parts)
    doc = statement(releases, 1e-5, "image")
    assert doc["unit"] == "image" and len(doc["releases"]) == 3 and doc["epsilon"] == pytest.approx(epsilon_of(releases, 1e-5))


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_calibrated_noise_spends_the_target_with_the_other_releases(target: float) -> None:
    fixed = [Release("gaussian", 20.0, 1, "count"), Release("laplace", 0.2, 1, "validation counts")]
    sigma = calibrate_sigma(target, 1e-5, 30, fixed)
    spent = epsilon_of([Release("gaussian", sigma, 30, "steps"), *fixed], 1e-5)
    assert spent <= target and spent == pytest.approx(target, rel=1e-3)


def test_a_budget_the_fixed_releases_already_spend_is_refused() -> None:
    from xincept.common.errors import SettingError

    with pytest.raises(SettingError, match="validation counts"):
        calibrate_sigma(0.5, 1e-5, 10, [Release("laplace", 1.0, 1, "validation counts")])


def test_nothing_released_costs_nothing() -> None:
    assert epsilon_of([], 1e-5) == 0.0
    assert epsilon_of([Release("gaussian", 1.0, 0, "no steps")], 1e-5) == 0.0
    assert rdp_to_dp(np.full_like(ORDERS, 1e-9), 1e-5)[0] >= 0.0
