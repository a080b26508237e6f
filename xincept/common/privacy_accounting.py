"""One privacy guarantee for everything a site releases: Rényi-DP composition of its mechanisms.

A site in whole-model DP mode makes three kinds of release, all about the same images:

- ``gaussian``: a sum of per-unit contributions, each clipped to L2 norm C, plus N(0, (sigma C)^2) noise per
  coordinate, released ``count`` times on the full data (no subsampling): the gradient steps of the head and the
  one noisy count of training units. RDP of order a: count * a / (2 sigma^2) (Mironov 2017, Prop. 7).
- ``laplace``: a release with L1 sensitivity 1 and Laplace noise of scale 1/epsilon, i.e. epsilon-DP (validation
  counts). RDP of order a > 1 (Mironov 2017, Table II):
  1/(a-1) log( a/(2a-1) exp((a-1) eps) + (a-1)/(2a-1) exp(-a eps) ).

RDP adds up over releases order by order; the (epsilon, delta) statement takes the best order with the conversion of
Balle et al. 2020 (Thm 21), the one Opacus uses, so numbers agree with Opacus' accountant where both apply
(tests/test_privacy_accounting.py checks both formulas against independent computations).

Where every release is Gaussian (a whole-model DP run: no subsampling, no Laplace), the statement is exact instead:
adaptively composed Gaussian mechanisms with noise multipliers sigma_i are exactly one Gaussian mechanism with
mu = sqrt(sum count_i / sigma_i^2) (Dong, Roth and Su 2022, Cor. 3.3), whose (epsilon, delta) curve is
delta(epsilon) = Phi(-epsilon/mu + mu/2) - e^epsilon Phi(-epsilon/mu - mu/2) (Balle and Wang 2018, Thm 8). The RDP
conversion is an upper bound on it: for the same epsilon it asks 6-8% more noise (epsilon 8 to 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

ORDERS = np.concatenate([np.linspace(1.01, 8, 100), np.arange(8, 64, 0.5), np.arange(64, 513, 4)])


@dataclass(frozen=True)
class Release:
    """One mechanism applied ``count`` times to a site's units: ``kind`` gaussian (``noise`` = sigma, the noise std
    over the clipping norm) or laplace (``noise`` = epsilon of one release); ``what`` says what it released."""

    kind: str
    noise: float
    count: int
    what: str

    def rdp(self, orders: np.ndarray = ORDERS) -> np.ndarray:
        a = np.asarray(orders, dtype=np.float64)
        if self.count <= 0:
            return np.zeros_like(a)
        if self.kind == "gaussian":
            return self.count * a / (2.0 * self.noise**2)
        if self.kind == "laplace":
            e = self.noise
            # log-sum-exp form, stable for large orders
            t1 = np.log(a / (2 * a - 1)) + (a - 1) * e
            t2 = np.log((a - 1) / (2 * a - 1)) - a * e
            per = (np.logaddexp(t1, t2)) / (a - 1)
            return self.count * np.minimum(per, e)  # never more than pure epsilon-DP gives
        raise ValueError(f"unknown mechanism {self.kind!r}")


def rdp_to_dp(rdp: np.ndarray, delta: float, orders: np.ndarray = ORDERS) -> tuple[float, float]:
    """(epsilon, best order) from RDP values at ``orders`` (Balle et al. 2020, Theorem 21)."""
    a = np.asarray(orders, dtype=np.float64)
    eps = rdp + np.log1p(-1 / a) - (math.log(delta) + np.log(a)) / (a - 1)
    eps = np.where(np.isnan(eps), np.inf, eps)
    i = int(np.argmin(eps))
    return max(0.0, float(eps[i])), float(a[i])


def gaussian_delta(epsilon: float, mu: float) -> float:
    """The exact delta at ``epsilon`` of a Gaussian mechanism with sensitivity / noise = ``mu`` (Balle and Wang 2018)."""
    from scipy.special import log_ndtr, ndtr

    return float(ndtr(-epsilon / mu + mu / 2) - math.exp(epsilon + log_ndtr(-epsilon / mu - mu / 2)))


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon at which a Gaussian mechanism with sensitivity / noise = ``mu`` is (epsilon, delta)-DP
    (bisection: delta(epsilon) decreases in epsilon)."""
    if mu <= 0 or gaussian_delta(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, mu) > delta:
        lo, hi = hi, 2 * hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(mid, mu) > delta else (lo, mid)
    return hi


def gaussian_mu(releases: list[Release]) -> float | None:
    """mu of the composition when every release is Gaussian (one Gaussian mechanism), else None."""
    if any(r.kind != "gaussian" for r in releases if r.count > 0):
        return None
    return math.sqrt(sum(r.count / r.noise**2 for r in releases if r.count > 0))


def epsilon_of(releases: list[Release], delta: float) -> float:
    """The (epsilon, delta)-DP epsilon of all ``releases`` together: exact where all are Gaussian, else by RDP."""
    if not any(r.count > 0 for r in releases):
        return 0.0
    mu = gaussian_mu(releases)
    if mu is not None:
        return gaussian_epsilon(mu, delta)
    return epsilon_by_rdp(releases, delta)


def epsilon_by_rdp(releases: list[Release], delta: float) -> float:
    """The epsilon of all ``releases`` together by RDP composition (an upper bound on the exact one)."""
    if not any(r.count > 0 for r in releases):
        return 0.0
    total = np.sum([r.rdp() for r in releases], axis=0)
    return rdp_to_dp(total, delta)[0]


def calibrate_sigma(target_epsilon: float, delta: float, steps: int, fixed: list[Release] = (), lo: float = 0.05,
                    hi: float = 5000.0) -> float:
    """The smallest Gaussian noise multiplier such that ``steps`` Gaussian releases plus ``fixed`` ones spend at most
    ``target_epsilon`` (bisection on a monotone function)."""
    from xincept.common.errors import SettingError

    def eps(s: float) -> float:
        return epsilon_of([Release("gaussian", s, steps, "steps"), *fixed], delta)

    if eps(hi) > target_epsilon:
        raise SettingError(f"dp-epsilon {target_epsilon:g}: the other releases ({', '.join(r.what for r in fixed)}) alone "
                           f"spend more; raise dp-epsilon or lower the validation disclosure's epsilon")
    for _ in range(80):
        mid = math.sqrt(lo * hi)
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def statement(releases: list[Release], delta: float, unit: str) -> dict:
    """What metrics.json says about one site: epsilon and delta covering every release, the unit, the releases."""
    return {"epsilon": epsilon_of(releases, delta), "delta": delta, "unit": unit,
            "accounting": ("exact composition of Gaussian releases (one Gaussian mechanism)" if gaussian_mu(releases) is not None
                           else "Renyi DP composition of every release") + " (xincept.common.privacy_accounting)",
            "releases": [asdict(r) for r in releases]}
