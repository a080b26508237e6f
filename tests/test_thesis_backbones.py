"""The thesis' backbone pair itself (random weights, small input): 2,048 pooled features each."""

from __future__ import annotations

import numpy as np
import pytest

from xincept.common.backbones import load_backbones
from xincept.common.config import THESIS_BACKBONES, BackboneConfig
from xincept.common.data import scan_site
from xincept.common.embed import embed_records

pytestmark = pytest.mark.integration


def test_xception_and_inception_embed_generated_images(tmp_path) -> None:
    from xincept.common.synthetic import write_image_folder

    site = scan_site(write_image_folder(tmp_path / "s", per_class=1), show_progress=False)
    cfg = BackboneConfig(names=THESIS_BACKBONES, input_size=96, pretrained=False, batch_size=4)
    bbs = load_backbones(cfg)
    assert [b.num_features for b in bbs] == [2048, 2048]
    assert bbs[0].data_config["crop_pct"] != bbs[1].data_config["crop_pct"]
    emb = embed_records(site.records, bbs, tmp_path / "cache", cfg, show_progress=False)
    for b in bbs:
        assert emb.base[b.name].shape == (4, 2048) and np.isfinite(emb.base[b.name]).all()
