"""The fused head is exactly thesis Algorithm 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xincept.common.config import ALGORITHM1_RECIPE, HeadConfig
from xincept.common.head import (FusedHead, HeadEnsemble, add_sums, ensemble_state, feature_sums, head_for_state, member_count,
                                 signed_log, sums_to_mean_std)


def test_layer_shapes_follow_algorithm_1() -> None:
    head = FusedHead([2048, 2048], 4)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items() if k.endswith("weight")}
    assert shapes == {
        "branches.0.0.weight": (64, 2048), "branches.0.2.weight": (4, 64),
        "branches.1.0.weight": (64, 2048), "branches.1.2.weight": (4, 64),
        "fusion.0.weight": (128, 8), "fusion.2.weight": (64, 128),
        "classifier.weight": (4, 64),
    }
    x = [torch.randn(5, 2048), torch.randn(5, 2048)]
    assert head(x).shape == (5, 4)
    assert head.embed(x).shape == (5, 64)


def test_bytes_of_head_fit_a_federated_round() -> None:
    head = FusedHead([2048, 2048], 4)
    nbytes = sum(v.numel() * v.element_size() for v in head.state_dict().values())
    assert nbytes < 1.2e6


@pytest.mark.parametrize("act,cls", [("relu", torch.nn.ReLU), ("gelu", torch.nn.GELU)])
def test_activation_is_selectable(act: str, cls: type) -> None:
    head = FusedHead([8, 8], 3, HeadConfig(activation=act))
    assert isinstance(head.branches[0][1], cls) and isinstance(head.fusion[1], cls)
    with pytest.raises(ValueError, match="relu"):  # SettingError is a ValueError
        HeadConfig(activation="tanh")


def test_l2_penalty_covers_only_the_k_wide_linear_layers() -> None:
    head = FusedHead([8, 8], 3, HeadConfig(**ALGORITHM1_RECIPE))  # Keras L2 0.01 belongs to Algorithm 1's recipe
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.classifier.weight.fill_(1.0)
    assert head.l2_penalty().item() == pytest.approx(0.01 * 3 * 64)
    with torch.no_grad():
        head.fusion[0].weight.fill_(5.0)
    assert head.l2_penalty().item() == pytest.approx(0.01 * 3 * 64)


def test_standardisation_from_summed_site_statistics_equals_pooled() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1e9, (30, 6)), rng.normal(5e8, 1e8, (50, 6))
    mean, std = sums_to_mean_std(add_sums([feature_sums(a), feature_sums(b)]))
    z = signed_log(np.concatenate([a, b]))
    np.testing.assert_allclose(mean, z.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, z.std(0), rtol=1e-4)
    head = FusedHead([6], 2)
    head.set_standardization([(mean, std)])
    out = head.norms[0](torch.as_tensor(np.concatenate([a, b]), dtype=torch.float32))
    assert torch.isfinite(out).all() and out.abs().mean() < 3


def test_standardisation_gives_tiny_scale_features_unit_variance() -> None:
    """Random-weight Xception features vary by ~1e-4: an absolute variance epsilon used to shrink them tenfold."""
    rng = np.random.default_rng(0)
    x = rng.normal(7e-5, 1e-4, (200, 8))
    x[:, 0] = 0.0  # a dead (constant) feature must not divide by zero
    mean, std = sums_to_mean_std(feature_sums(x))
    z = (signed_log(x) - mean) / std
    np.testing.assert_allclose(z[:, 1:].std(0), 1.0, rtol=1e-3)
    assert np.isfinite(z).all() and np.all(z[:, 0] == 0)


def test_ensemble_averages_the_members_softmax_and_concatenates_their_embeddings() -> None:
    torch.manual_seed(0)
    heads = [FusedHead([12, 8], 4) for _ in range(3)]
    state = ensemble_state([h.state_dict() for h in heads])
    assert member_count(state) == 3 and member_count(heads[0].state_dict()) == 1
    ens = head_for_state([12, 8], 4, HeadConfig(), state)
    assert isinstance(ens, HeadEnsemble) and not ens.training
    x = [torch.randn(6, 12), torch.randn(6, 8)]
    with torch.no_grad():
        want = torch.stack([torch.softmax(h.eval()(x), 1) for h in heads]).mean(0)
        assert torch.allclose(torch.softmax(ens(x), 1), want, atol=1e-6)
        assert torch.allclose(ens.embed(x), torch.cat([h.embed(x) for h in heads], 1))
    assert ens.embedding_dim == 3 * 64
    single = head_for_state([12, 8], 4, HeadConfig(), ensemble_state([heads[0].state_dict()]))
    assert isinstance(single, FusedHead)
    with pytest.raises(ValueError, match="at least 2"):
        HeadEnsemble([12, 8], 4, members=1)
