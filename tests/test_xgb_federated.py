"""Federated XGBoost: histogram mode equals centralized training; bagging keeps multiclass trees together."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from xincept.common.classifiers import XGBInput, fit_xgb, xgb_predict_proba
from xincept.common.config import XGBConfig
from xincept.common.xgb_federated import boost_from, booster_from_raw, free_port, merge_bagging, start_tracker, train_histogram

CFG = XGBConfig(n_estimators=25, max_depth=3, max_bin=64, early_stopping_rounds=5)


def _data(seed: int = 0, n: int = 300, k: int = 4):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, 6)).astype(np.float32)  # 40 distinct values per feature <= max_bin
    y = ((x[:, 0] + x[:, 1] + rng.integers(0, 10, n)) // 23).astype(int) % k
    return x, y


def _site(args):
    x, y, xv, yv, address, rank, world, tls = args
    return train_histogram(x, y, xv, yv, address, rank, world, 4, CFG, Path(tls), timeout=60)


@pytest.mark.integration
@pytest.mark.parametrize("margin", [False, True], ids=["from-constant", "from-head-logits"])
def test_histogram_mode_gives_the_centralized_booster_over_mutual_tls(tmp_path: Path, margin: bool) -> None:
    from xincept.common.tls import make_certificates, make_site_certificates

    make_certificates(tmp_path, ["localhost", "127.0.0.1"])
    sites = make_site_certificates(tmp_path, ["s0", "s1", "s2"])  # one client certificate per site, no shared key
    x, y = _data()
    xv, yv = _data(seed=1, n=120)
    if margin:  # each site boosts from its own rows' head logits; they stay at the site like the rows
        rng = np.random.default_rng(2)
        x, xv = XGBInput(x, rng.normal(size=(len(y), 4))), XGBInput(xv, rng.normal(size=(len(yv), 4)))
    shards = [np.arange(len(y))[r::3] for r in range(3)]
    vshards = [np.arange(len(yv))[r::3] for r in range(3)]
    port = free_port()
    start_tracker(3, port, tmp_path, timeout=60)
    with mp.get_context("spawn").Pool(3) as pool:
        raws = pool.map(_site, [(x[s], y[s], xv[v], yv[v], f"localhost:{port}", r, 3, str(sites[f"s{r}"]))
                                for r, (s, v) in enumerate(zip(shards, vshards))])
    assert raws[0] == raws[1] == raws[2]
    order = np.concatenate(shards)
    vorder = np.concatenate(vshards)
    central = fit_xgb(x[order], y[order], xv[vorder], yv[vorder], 4, CFG)
    fed = booster_from_raw(raws[0])
    np.testing.assert_allclose(xgb_predict_proba(fed, x), xgb_predict_proba(central, x), atol=1e-6)
    assert (xgb_predict_proba(fed, xv).argmax(1) == xgb_predict_proba(central, xv).argmax(1)).all()


def test_bagging_averages_each_sites_new_trees_for_all_classes() -> None:
    import xgboost as xgb

    x, y = _data()
    a, b = np.arange(len(y))[::2], np.arange(len(y))[1::2]
    cfg = XGBConfig(max_depth=2)
    ra, rb = boost_from(None, x[a], y[a], 4, cfg), boost_from(None, x[b], y[b], 4, cfg)
    merged = merge_bagging(None, [ra, rb], [0.25, 0.75])
    model = json.loads(merged)["learner"]["gradient_booster"]["model"]
    assert model["tree_info"] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert model["iteration_indptr"] == [0, 4, 8]
    d = xgb.DMatrix(x)
    margin = lambda raw: booster_from_raw(raw).predict(d, output_margin=True)  # noqa: E731
    expected = 0.5 + 0.25 * (margin(ra) - 0.5) + 0.75 * (margin(rb) - 0.5)
    np.testing.assert_allclose(margin(merged), expected, rtol=1e-5, atol=1e-5)
    # a second round boosts from the merged model and appends, keeping earlier trees
    r2 = merge_bagging(merged, [boost_from(merged, x[a], y[a], 4, cfg), boost_from(merged, x[b], y[b], 4, cfg)], [0.5, 0.5])
    assert json.loads(r2)["learner"]["gradient_booster"]["model"]["iteration_indptr"] == [0, 4, 8, 12, 16]
