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
  changes the matrix by 2 in L1), rounded and clipped at zero; the totals (images, correct ones) are
  computed from the noisy cells before clipping (clipping would add errors to every empty cell), so the
  whole release is epsilon-differentially private per image.
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


def suppress_vector(counts: np.ndarray, threshold: int, hidden: np.ndarray | None = None) -> np.ndarray:
    """Primary suppression of a count vector whose total is known, with complementary suppression.

    ``hidden`` marks cells to withhold besides the small ones. A lone withheld cell would equal the known total
    minus the released cells, so the smallest released non-zero cell is withheld with it; when no such cell
    exists the whole vector is withheld.
    """
    counts = np.asarray(counts, dtype=np.int64)
    hide = (counts > 0) & (counts < threshold)
    if hidden is not None:
        hide |= hidden
    if hide.sum() == 1:
        others = np.flatnonzero(~hide & (counts > 0))
        if len(others):
            hide[others[np.argmin(counts[others])]] = True
        else:
            hide[:] = True
    return np.where(hide, SUPPRESSED, counts)


def _suppress(cm: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Primary suppression of small cells and totals, then complementary suppression against every total a reader
    knows: the number of images and of correct ones (so the diagonal's and the off-diagonal cells' sums), and each
    class's released images (row) and predictions (column). A set of cells whose total is known must never hold a
    lone withheld cell; its complement is, in this order, the smallest released non-zero off-diagonal cell, a zero
    off-diagonal cell, then the smallest diagonal cell: the diagonal and the totals are what the metrics need
    (xincept.common.count_metrics), so they are withheld last. Returns the released matrix and the two totals."""
    k = cm.shape[0]
    rows = suppress_vector(cm.sum(1), threshold)
    cols = suppress_vector(cm.sum(0), threshold)
    hidden = (cm > 0) & (cm < threshold)
    diag = np.eye(k, dtype=bool)
    # every total counts as known, withheld or not: a class's images also follow from its released score histograms
    rows_of = [np.outer(np.eye(k, dtype=bool)[i], np.ones(k, dtype=bool)) for i in range(k)]
    parts = [diag, ~diag, *rows_of, *(r.T for r in rows_of)]

    def complement(part: np.ndarray) -> tuple[int, int] | None:
        for pool in (part & ~hidden & ~diag & (cm > 0), part & ~hidden & ~diag, part & ~hidden & diag):
            cells = np.argwhere(pool)
            if len(cells):
                i, j = min(cells, key=lambda ij: (cm[ij[0], ij[1]], ij[0], ij[1]))
                return int(i), int(j)
        return None

    changed = True
    while changed:
        changed = False
        for part in parts:
            if (hidden & part).sum() == 1:
                cell = complement(part)
                if cell is not None:
                    hidden[cell] = True
                    changed = True
    out = cm.copy()
    out[hidden] = SUPPRESSED
    return out, rows, cols


def release_confusion(cm: np.ndarray, policy: DisclosurePolicy, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """The counts a site may send: ``confusion`` (flattened, -1 = withheld), ``n``, ``correct``, ``suppressed``, and
    per class its images (``class-total``) and predictions (``pred-total``), -1 where withheld."""
    cm = np.asarray(cm, dtype=np.int64)
    if policy.kind == "laplace":  # the noisy matrix and its own sums: nothing more leaves
        rng = rng or np.random.default_rng()
        raw = cm + rng.laplace(0.0, 2.0 / policy.epsilon, cm.shape)
        noisy = np.clip(np.rint(raw), 0, None).astype(np.int64)
        # the totals from the unclipped noisy cells: clipping each cell at zero adds about 1 / epsilon to every empty
        # cell, which would count as errors; these totals carry no such bias (and are the same release's post-processing)
        return {"confusion": noisy.reshape(-1).tolist(), "n": max(int(np.rint(raw.sum())), 0),
                "correct": int(np.clip(np.rint(np.trace(raw)), 0, max(int(np.rint(raw.sum())), 0))),
                "suppressed": 0, "class-total": noisy.sum(1).tolist(), "pred-total": noisy.sum(0).tolist()}
    if policy.kind == "suppress":
        released, rows, cols = _suppress(cm, policy.threshold)
    else:
        released, rows, cols = cm, cm.sum(1), cm.sum(0)
    return {"confusion": released.reshape(-1).tolist(), "n": int(cm.sum()), "correct": int(np.trace(cm)),
            "suppressed": int((released == SUPPRESSED).sum()), "class-total": rows.tolist(), "pred-total": cols.tolist()}
