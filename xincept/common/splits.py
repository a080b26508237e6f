"""Stratified, grouped, deterministic splits.

Groups (runs of consecutive file numbers, a manifest's group column, exact duplicates merged)
never straddle a split, so no patient's neighbouring images leak from training into testing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xincept.common.errors import DataError


@dataclass(frozen=True)
class Fold:
    train: np.ndarray
    test: np.ndarray


def group_ids(groups: list[str]) -> np.ndarray:
    _, ids = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    return ids


def grouped_kfold(y: np.ndarray, groups: list[str], k: int, seed: int) -> list[Fold]:
    """k stratified folds over whole groups (sklearn StratifiedGroupKFold, shuffled by ``seed``)."""
    from sklearn.model_selection import StratifiedGroupKFold

    gid = group_ids(groups)
    n_groups = len(np.unique(gid))
    if n_groups < k:
        raise DataError(
            f"only {n_groups} patient group(s) for {k}-fold cross-validation: lower --folds, "
            "lower --group-block, or give a manifest with a finer group column"
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    try:
        return [Fold(np.sort(tr), np.sort(te)) for tr, te in splitter.split(np.zeros(len(y)), y, gid)]
    except ValueError as exc:
        raise DataError(f"cannot make {k} grouped folds ({exc}): lower --folds or add images") from exc


def holdout_folds(fraction: float) -> int:
    """How many disjoint grouped holdouts of ``fraction`` cover a data set (5 for 20%)."""
    return max(2, int(round(1.0 / fraction)))


def grouped_holdout(y: np.ndarray, groups: list[str], fraction: float, seed: int, fold: int = 0) -> Fold:
    """One grouped, stratified split: ``test`` holds about ``fraction`` of the images.

    ``fold`` picks which of the ``holdout_folds(fraction)`` grouped folds is held out: folds 0..k-1 test
    every image once (cross-validation), as long as there are enough groups for k folds.
    """
    k = holdout_folds(fraction)
    if not 0 <= fold < k:
        raise DataError(f"test fold {fold}: a {fraction:.0%} holdout has folds 0 to {k - 1}")
    gid = group_ids(groups)
    if len(np.unique(gid)) < k or np.bincount(y).max() < k:
        from sklearn.model_selection import GroupShuffleSplit

        if len(np.unique(gid)) < 2:
            raise DataError("a grouped split needs at least 2 patient groups: add images or lower --group-block")
        tr, te = next(GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed + fold).split(y, y, gid))
        return Fold(np.sort(tr), np.sort(te))
    return grouped_kfold(y, groups, k, seed)[fold]


def manifest_split(splits: list[str | None]) -> dict[str, np.ndarray] | None:
    """Indices per split name when a manifest fixes the split of every image, else None."""
    if not splits or any(s is None for s in splits):
        return None
    arr = np.asarray(splits)
    return {name: np.flatnonzero(arr == name) for name in ("train", "val", "test")}


def check_group_purity(folds: list[Fold], groups: list[str]) -> None:
    """Raise if any group appears on both sides of a fold (a leak)."""
    g = np.asarray(groups, dtype=object)
    for i, f in enumerate(folds):
        if set(g[f.train]) & set(g[f.test]):
            raise AssertionError(f"fold {i}: groups straddle train and test")


def site_split(y: np.ndarray, groups: list[str], test_fraction: float, val_fraction: float, seed: int,
               test_fold: int = 0) -> dict[str, np.ndarray]:
    """A site's grouped train / val / test indices (test held out for validation, val for model selection).

    ``test_fold`` selects which grouped fold is the test split, so runs with folds 0..k-1 are a grouped k-fold CV.
    """
    outer = grouped_holdout(y, groups, test_fraction, seed, test_fold)
    rest = outer.train
    inner = grouped_holdout(y[rest], [groups[i] for i in rest], val_fraction, seed + 1)
    return {"train": rest[inner.train], "val": rest[inner.test], "test": outer.test}
