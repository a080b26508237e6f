"""Disclosure control for the counts a site releases in validation.

A site's confusion matrix is small-count data about its patients: a cell of 1 or 2 can identify
a person when combined with other knowledge. Before counts leave a site they pass through one of:

- ``suppress`` (default): cells in 1..threshold-1 are withheld (sent as -1). When a row total is
  released and exactly one cell of that row is withheld, the next-smallest non-zero cell is
  withheld too (complementary suppression), so subtraction cannot recover the first. Row totals
  (per-class counts) below the threshold are withheld as well. The total and the number correct
  are released: they are what accuracy needs and are large aggregates.
- ``laplace``: every cell gets Laplace noise of scale 2/epsilon (moving one image between cells
  changes the matrix by 2 in L1), rounded and clipped at zero; totals are computed from the noisy
  cells, so the whole release is epsilon-differentially private per image.
- ``none``: exact counts (for synthetic data and tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xincept.common.errors import SettingError

SUPPRESSED = -1
POLICIES = ("suppress", "laplace", "none")


@dataclass(frozen=True)
class DisclosurePolicy:
    kind: str = "suppress"
    threshold: int = 5
    epsilon: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise SettingError(f"disclosure={self.kind!r}: choose one of {POLICIES}")
        if self.threshold < 1:
            raise SettingError("min-cell-count must be at least 1")
        if self.epsilon <= 0:
            raise SettingError("disclosure-epsilon must be positive")

    def describe(self) -> str:
        if self.kind == "suppress":
            return f"cells below {self.threshold} suppressed (with complementary suppression in each row)"
        if self.kind == "laplace":
            return f"Laplace noise on every cell, epsilon {self.epsilon:g} per release (per image)"
        return "exact counts (no disclosure control)"


def _suppress(cm: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    rows = cm.sum(1)
    out = cm.copy()
    hidden = (cm > 0) & (cm < threshold)
    row_hidden = rows < threshold
    for i in range(cm.shape[0]):
        if row_hidden[i] or hidden[i].sum() != 1:
            continue
        candidates = [(cm[i, j], j) for j in range(cm.shape[1]) if not hidden[i, j] and cm[i, j] > 0]
        if candidates:  # a lone withheld cell is recoverable from the row total: withhold a second one
            hidden[i, min(candidates)[1]] = True
        else:
            row_hidden[i] = True
    out[hidden] = SUPPRESSED
    totals = np.where(row_hidden, SUPPRESSED, rows)
    return out, totals


def release_confusion(cm: np.ndarray, policy: DisclosurePolicy, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """The counts a site may send: ``confusion`` (flattened, -1 = withheld), ``class-counts``, ``n``, ``correct``."""
    cm = np.asarray(cm, dtype=np.int64)
    if policy.kind == "laplace":
        rng = rng or np.random.default_rng()
        noisy = np.clip(np.rint(cm + rng.laplace(0.0, 2.0 / policy.epsilon, cm.shape)), 0, None).astype(np.int64)
        return {"confusion": noisy.reshape(-1).tolist(), "class-counts": noisy.sum(1).tolist(), "n": int(noisy.sum()),
                "correct": int(np.trace(noisy)), "suppressed": 0}
    if policy.kind == "suppress":
        released, totals = _suppress(cm, policy.threshold)
    else:
        released, totals = cm, cm.sum(1)
    return {"confusion": released.reshape(-1).tolist(), "class-counts": np.asarray(totals).tolist(), "n": int(cm.sum()),
            "correct": int(np.trace(cm)), "suppressed": int((released == SUPPRESSED).sum())}


def confusion_from_release(flat: list[int] | np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """The released matrix with withheld cells counted as 0, and how many were withheld."""
    arr = np.asarray(flat, dtype=np.int64).reshape(k, k)
    hidden = arr == SUPPRESSED
    return np.where(hidden, 0, arr), int(hidden.sum())
