from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from xincept.common.backbones import load_backbones
from xincept.common.config import BackboneConfig
from xincept.common.data import scan_site
from xincept.common.embed import embed_records, prefetch
from xincept.common.errors import SettingError
from xincept.common.numerics import EmbedPath, choose_path


def test_fp32_can_be_forced_and_reference_path_has_no_cache_suffix() -> None:
    path = choose_path(BackboneConfig(precision="fp32", device="cpu"))
    assert path.dtype == "float32" and path.cache_tag == "" and not path.fuse_conv_bn
    assert EmbedPath(device="cpu", dtype="bfloat16", fuse_conv_bn=True).cache_tag == "-bf16-fused"
    with pytest.raises(SettingError, match="precision"):
        BackboneConfig(precision="int8")


def test_auto_path_follows_cpu_features(monkeypatch: pytest.MonkeyPatch) -> None:
    import xincept.common.numerics as numerics

    monkeypatch.setattr(numerics, "cpu_supports_bf16", lambda: True)
    assert choose_path(BackboneConfig(device="cpu")).dtype == "bfloat16"
    monkeypatch.setattr(numerics, "cpu_supports_bf16", lambda: False)
    assert choose_path(BackboneConfig(device="cpu")).dtype == "float32"


def test_fast_path_features_match_fp32_and_are_cached_apart(image_dir: Path, tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    import xincept.common.numerics as numerics

    monkeypatch.setattr(numerics, "cpu_supports_bf16", lambda: True)  # exercise the bf16 path on any x86 CPU
    site = scan_site(image_dir, show_progress=False)
    fast_cfg = tiny_cfg.backbone
    ref_cfg = replace(fast_cfg, precision="fp32")
    bbs = load_backbones(fast_cfg)
    fast = embed_records(site.records, bbs, tiny_cfg.cache_dir, fast_cfg, show_progress=False)
    ref = embed_records(site.records, bbs, tiny_cfg.cache_dir, ref_cfg, show_progress=False)
    assert fast.computed == ref.computed == 40 and fast.path.dtype == "bfloat16"
    for b in bbs:
        a, r = fast.base[b.name], ref.base[b.name]
        cos = (a * r).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1))
        assert cos.min() > 0.98


def test_prefetch_yields_everything_in_order_and_reraises() -> None:
    assert list(prefetch(iter(range(50)))) == list(range(50))

    def boom():
        yield 1
        raise RuntimeError("decode failed")

    with pytest.raises(RuntimeError, match="decode failed"):
        list(prefetch(boom()))
