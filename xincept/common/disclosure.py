"""Disclosure control for the counts a site releases in validation.

A site's confusion matrix is small-count data about its patients: a cell of 1 or 2 can identify
a person when combined with other knowledge. Before counts leave a site they pass through one of:

- ``suppress`` (default): cells in 1..threshold-1 are withheld (sent as -1). Only two totals are
  released besides the cells: the number of images and the number correct (what accuracy needs).
  They let anyone compute the sum of the withheld diagonal cells and the sum of the withheld
  off-diagonal cells, and the score histograms released beside the matrix can give away a row or
  column total; so when exactly one cell of any of these sets is withheld, the smallest released
  non-zero cell of that set is withheld too (complementary suppression), until no set has a lone one.
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


def _suppress(cm: np.ndarray, threshold: int) -> np.ndarray:
    """Primary suppression of small cells, then complementary suppression against every total a reader may know:
    the diagonal and off-diagonal sums (from n and correct) and each row and column (a class's image count and
    its predicted count follow from the released score histograms). Repeated until no total isolates a cell."""
    k = cm.shape[0]
    hidden = (cm > 0) & (cm < threshold)
    diag = np.eye(k, dtype=bool)
    parts = [diag, ~diag] + [np.eye(k, dtype=bool)[i][:, None] & np.ones((1, k), dtype=bool) for i in range(k)]
    parts += [p.T for p in parts[2:]]
    changed = True
    while changed:
        changed = False
        for part in parts:
            if (hidden & part).sum() == 1:
                candidates = np.argwhere(part & ~hidden & (cm > 0))
                if len(candidates):
                    i, j = min(candidates, key=lambda ij: cm[ij[0], ij[1]])
                    hidden[i, j] = True
                    changed = True
    out = cm.copy()
    out[hidden] = SUPPRESSED
    return out


def release_confusion(cm: np.ndarray, policy: DisclosurePolicy, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """The counts a site may send: ``confusion`` (flattened, -1 = withheld), ``n``, ``correct``, ``suppressed``."""
    cm = np.asarray(cm, dtype=np.int64)
    if policy.kind == "laplace":
        rng = rng or np.random.default_rng()
        noisy = np.clip(np.rint(cm + rng.laplace(0.0, 2.0 / policy.epsilon, cm.shape)), 0, None).astype(np.int64)
        return {"confusion": noisy.reshape(-1).tolist(), "n": int(noisy.sum()), "correct": int(np.trace(noisy)), "suppressed": 0}
    released = _suppress(cm, policy.threshold) if policy.kind == "suppress" else cm
    return {"confusion": released.reshape(-1).tolist(), "n": int(cm.sum()), "correct": int(np.trace(cm)),
            "suppressed": int((released == SUPPRESSED).sum())}


def confusion_from_release(flat: list[int] | np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """The released matrix with withheld cells counted as 0, and how many were withheld."""
    arr = np.asarray(flat, dtype=np.int64).reshape(k, k)
    hidden = arr == SUPPRESSED
    return np.where(hidden, 0, arr), int(hidden.sum())
