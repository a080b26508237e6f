"""The fused head is exactly thesis Algorithm 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xincept.common.config import HeadConfig
from xincept.common.head import FusedHead, add_sums, feature_sums, signed_log, sums_to_mean_std


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
    head = FusedHead([8, 8], 3)
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
