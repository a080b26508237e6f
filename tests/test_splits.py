from __future__ import annotations

import numpy as np
import pytest

from xincept.common.errors import DataError
from xincept.common.splits import check_group_purity, grouped_holdout, grouped_kfold


def _data(n_groups: int = 40, per_group: int = 5, k: int = 4):
    y = np.repeat(np.arange(n_groups) % k, per_group)
    groups = [f"g{i // per_group}" for i in range(n_groups * per_group)]
    return y, groups


def test_kfold_keeps_groups_whole_and_covers_every_image() -> None:
    y, groups = _data()
    folds = grouped_kfold(y, groups, 5, seed=0)
    check_group_purity(folds, groups)
    tested = np.sort(np.concatenate([f.test for f in folds]))
    assert np.array_equal(tested, np.arange(len(y)))
    for f in folds:  # stratified: every class in every test fold
        assert set(y[f.test]) == {0, 1, 2, 3}


def test_kfold_is_deterministic_and_seed_dependent() -> None:
    y, groups = _data()
    a = grouped_kfold(y, groups, 5, seed=0)
    b = grouped_kfold(y, groups, 5, seed=0)
    c = grouped_kfold(y, groups, 5, seed=1)
    assert all(np.array_equal(x.test, z.test) for x, z in zip(a, b))
    assert any(not np.array_equal(x.test, z.test) for x, z in zip(a, c))


def test_too_few_groups_is_a_clear_error() -> None:
    y, groups = _data(n_groups=3)
    with pytest.raises(DataError, match="only 3 patient group"):
        grouped_kfold(y, groups, 5, seed=0)


def test_holdout_fraction_and_purity() -> None:
    y, groups = _data()
    fold = grouped_holdout(y, groups, 0.2, seed=0)
    check_group_purity([fold], groups)
    assert 0.1 < len(fold.test) / len(y) < 0.3


def test_site_split_test_folds_are_a_grouped_cross_validation() -> None:
    from xincept.common.splits import site_split

    y, groups = _data()
    splits = [site_split(y, groups, 0.2, 0.15, seed=0, test_fold=k) for k in range(5)]
    tested = np.sort(np.concatenate([s["test"] for s in splits]))
    assert np.array_equal(tested, np.arange(len(y)))  # every image tested exactly once over the 5 folds
    for s in splits:
        parts = [set(np.asarray(groups, dtype=object)[s[k]]) for k in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])  # no group straddles
        assert sum(len(s[k]) for k in ("train", "val", "test")) == len(y)
    assert np.array_equal(splits[0]["test"], grouped_holdout(y, groups, 0.2, seed=0).test)  # fold 0 is the default split
    with pytest.raises(DataError, match="folds 0 to 4"):
        grouped_holdout(y, groups, 0.2, seed=0, fold=5)
