"""Update screening before aggregation, and DP-SGD budgets at a site."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from xincept.common.config import HeadConfig
from xincept.common.fedconfig import FedSettings
from xincept.common.train_head import new_head, predict_logits
from xincept.server.robust import screen_updates


def _reply(state: dict[str, np.ndarray]) -> SimpleNamespace:
    """A train.head reply as the server reads it: the head packed into one array, in the layout the server sent."""
    vec = np.concatenate([np.asarray(v, np.float32).ravel() for v in state.values()])
    return SimpleNamespace(content=RecordDict({"arrays": ArrayRecord({"head": Array(vec)})}))


def test_nan_wrong_shape_and_outlying_updates_are_rejected_by_site() -> None:
    glob = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}
    shapes = {k: tuple(v.shape) for k, v in glob.items()}
    good = {"w": np.full((3, 2), 0.1, np.float32), "b": np.full(2, 0.1, np.float32)}
    replies = {
        1: _reply(good), 2: _reply({**good, "w": good["w"] * 1.1}), 3: _reply({**good, "b": good["b"] * 0.9}),
        4: _reply({**good, "w": np.full((3, 2), np.nan, np.float32)}),
        5: _reply({**good, "w": np.zeros((4, 3), np.float32)}),  # a head of another size
        6: _reply({**good, "w": np.full((3, 2), 50.0, np.float32)}),
    }
    nodes = {i: f"site-{i}" for i in replies}
    accepted, rejected, norms = screen_updates(replies, nodes, glob, shapes, max_norm=0.0, max_ratio=10.0)
    assert sorted(accepted) == [1, 2, 3]
    assert "non-finite" in rejected["site-4"] and "needs 8" in rejected["site-5"] and "median" in rejected["site-6"]
    _, rejected_abs, _ = screen_updates({1: replies[1], 2: replies[2]}, {1: "a", 2: "b"}, glob, shapes, max_norm=0.3)
    assert set(rejected_abs) == {"b"} and "max-update-norm" in rejected_abs["b"]


def _site(tmp_n: int = 200, **settings) -> SimpleNamespace:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, tmp_n)
    feats = [rng.normal(size=(tmp_n, 16)).astype(np.float32) + y[:, None] * 0.5 for _ in range(2)]
    s = FedSettings(pretrained=False, local_epochs=2, rounds=2, **settings)
    return SimpleNamespace(name="site-a", settings=s, site=SimpleNamespace(feats=feats, y=y), classes=["a", "b", "c", "d"],
                           split={"train": np.arange(tmp_n)})


def test_dp_sgd_learns_spends_at_most_its_budget_and_then_refuses(tmp_path) -> None:
    from xincept.client.task import local_train
    from xincept.common.head import new_head_for
    from xincept.common.dp import BudgetSpent

    local = _site(dp_epsilon=3.0)
    head = new_head_for([16, 16], 4, local.settings.run_config().head)
    state = head.trainable_state()
    ledger = tmp_path / "ledger.json"
    spent = []
    for r in (1, 2):
        state, metrics = local_train(local, state, r, ledger)
        spent.append(metrics["dp-epsilon"])
        assert metrics["dp-noise_multiplier"] > 0 and metrics["dp-max_grad_norm"] == 1.0
    assert spent[0] < spent[1] <= 3.0 + 1e-6
    assert all(torch.isfinite(v).all() for v in state.values())
    with pytest.raises(BudgetSpent, match="privacy budget"):
        local_train(local, state, 3, ledger)


def test_dp_epochs_take_the_planned_poisson_steps() -> None:
    """Opacus' hook-based per-sample gradients on the head (its speed is measured in bench/dp.py, not here)."""
    from xincept.common.dp import dp_train_epochs, make_plan

    rng = np.random.default_rng(0)
    n = 256
    feats = [rng.normal(size=(n, 32)).astype(np.float32) for _ in range(2)]
    y = rng.integers(0, 4, n)
    cfg = HeadConfig()
    plan = make_plan(n, cfg.batch_size, 1, 10, 8.0, 1e-5, 1.0)
    head = new_head(feats, 4, cfg)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    loss, steps = dp_train_epochs(head, feats, y, 2, cfg, plan)
    assert steps == 2 * round(1 / plan.sample_rate) and np.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in head.state_dict().items())
    assert np.isfinite(predict_logits(head, feats)).all()
