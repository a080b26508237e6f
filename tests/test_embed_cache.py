from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from xincept.common.augment import augment
from xincept.common.backbones import load_backbones
from xincept.common.data import scan_site
from xincept.common.embed import embed_records


def test_second_run_embeds_nothing_and_gives_identical_features(image_dir: Path, tiny_cfg) -> None:
    site = scan_site(image_dir, show_progress=False)
    bbs = load_backbones(tiny_cfg.backbone)
    first = embed_records(site.records, bbs, tiny_cfg.cache_dir, tiny_cfg.backbone, show_progress=False)
    second = embed_records(site.records, bbs, tiny_cfg.cache_dir, tiny_cfg.backbone, show_progress=False)
    assert first.computed == 40 and second.computed == 0
    for b in bbs:
        assert first.base[b.name].shape == (40, b.num_features)
        np.testing.assert_array_equal(first.base[b.name], second.base[b.name])
    assert not list(tiny_cfg.cache_dir.rglob("*.tmp"))


def test_cache_key_separates_input_sizes(image_dir: Path, tiny_cfg) -> None:
    from dataclasses import replace

    site = scan_site(image_dir, show_progress=False)
    bbs = load_backbones(tiny_cfg.backbone)
    embed_records(site.records[:4], bbs, tiny_cfg.cache_dir, tiny_cfg.backbone, show_progress=False)
    other = replace(tiny_cfg.backbone, input_size=96)
    again = embed_records(site.records[:4], load_backbones(other), tiny_cfg.cache_dir, other, show_progress=False)
    assert again.computed == 4


def test_damaged_cache_entry_is_recomputed(image_dir: Path, tiny_cfg) -> None:
    site = scan_site(image_dir, show_progress=False)
    bbs = load_backbones(tiny_cfg.backbone)
    embed_records(site.records[:3], bbs, tiny_cfg.cache_dir, tiny_cfg.backbone, show_progress=False)
    victim = next(tiny_cfg.cache_dir.rglob("*.npy"))
    victim.write_bytes(b"broken")
    emb = embed_records(site.records[:3], bbs, tiny_cfg.cache_dir, tiny_cfg.backbone, show_progress=False)
    assert all(np.isfinite(v).all() for v in emb.base.values())


def test_duplicates_are_embedded_once(image_dir: Path, tiny_cfg) -> None:
    import shutil

    shutil.copy(image_dir / "Pro" / "Pro-001.png", image_dir / "Pro" / "Pro-099.png")
    site = scan_site(image_dir, show_progress=False)
    emb = embed_records(site.records, load_backbones(tiny_cfg.backbone), tiny_cfg.cache_dir, tiny_cfg.backbone, show_progress=False)
    assert len(site.records) == 41 and emb.computed == 40


def test_augmented_views_are_cached_deterministic_and_distinct(image_dir: Path, tiny_cfg) -> None:
    site = scan_site(image_dir, show_progress=False)
    recs = site.records[:4]
    bbs = load_backbones(tiny_cfg.backbone)
    a = embed_records(recs, bbs, tiny_cfg.cache_dir, tiny_cfg.backbone, views=2, aug_seed=7, show_progress=False)
    b = embed_records(recs, bbs, tiny_cfg.cache_dir, tiny_cfg.backbone, views=2, aug_seed=7, show_progress=False)
    assert a.computed == 12 and b.computed == 0
    name = bbs[0].name
    assert a.views[name].shape == (4, 2, bbs[0].num_features)
    assert not np.allclose(a.views[name][:, 0], a.base[name])
    assert not np.allclose(a.views[name][:, 0], a.views[name][:, 1])


def test_augment_is_deterministic_and_keeps_size() -> None:
    img = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    x1, x2 = augment(img, "abc", 1, 0), augment(img, "abc", 1, 0)
    assert x1.size == img.size
    assert np.array_equal(np.asarray(x1), np.asarray(x2))
    assert not np.array_equal(np.asarray(x1), np.asarray(augment(img, "abc", 2, 0)))


def test_a_fully_cached_site_is_served_without_building_the_backbones(image_dir: Path, tiny_cfg, monkeypatch) -> None:
    """The second prepare_site reads the backbones' descriptors; a missing image or a damaged entry builds them."""
    import xincept.common.site as site_mod
    from xincept.common.site import prepare_site

    first = prepare_site(image_dir, tiny_cfg, show_progress=False)
    assert all(b.model is not None for b in first.backbones)
    assert len(list((tiny_cfg.cache_dir / "backbones").glob("*.json"))) == len(tiny_cfg.backbone.names)

    def no_build(cfg):
        raise AssertionError("the backbones were built although every image is cached")

    monkeypatch.setattr(site_mod, "load_backbones", no_build)
    second = prepare_site(image_dir, tiny_cfg, show_progress=False)
    assert all(b.model is None for b in second.backbones) and second.embeddings.computed == 0
    assert [b.describe() for b in second.backbones] == [b.describe() for b in first.backbones]
    assert [b.param_bytes for b in second.backbones] == [b.param_bytes for b in first.backbones] and first.backbones[0].param_bytes > 0
    for a, b in zip(first.feats, second.feats):
        np.testing.assert_array_equal(a, b)

    monkeypatch.undo()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(image_dir / "Pro" / "Pro-077.png")  # a new image: the networks are needed
    third = prepare_site(image_dir, tiny_cfg, show_progress=False)
    assert third.embeddings.computed == 1 and all(b.model is not None for b in third.backbones)


def test_a_descriptor_is_keyed_by_the_weights_it_describes(tmp_path: Path, tiny_cfg) -> None:
    """Staged weights are keyed by the file's content: replaced weights are never served from an old descriptor."""
    from dataclasses import replace

    from safetensors.torch import save_file

    from xincept.common.backbones import remember_backbones, remembered_backbones, staged_weights_file

    bbs = load_backbones(tiny_cfg.backbone)
    remember_backbones(bbs, tiny_cfg.backbone, tiny_cfg.cache_dir)
    assert [b.fingerprint for b in remembered_backbones(tiny_cfg.backbone, tiny_cfg.cache_dir)] == [b.fingerprint for b in bbs]
    assert remembered_backbones(replace(tiny_cfg.backbone, input_size=96), tiny_cfg.cache_dir) is None

    staged = replace(tiny_cfg.backbone, pretrained=True, weights_dir=tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    for b in bbs:
        save_file({k: v.contiguous() for k, v in b.model.state_dict().items()}, str(staged_weights_file(tmp_path / "weights", b.name)))
    built = load_backbones(staged)
    remember_backbones(built, staged, tiny_cfg.cache_dir)
    assert [b.fingerprint for b in remembered_backbones(staged, tiny_cfg.cache_dir)] == [b.fingerprint for b in built]
    path = staged_weights_file(tmp_path / "weights", bbs[0].name)
    state = {k: v.contiguous() + 1.0 if v.is_floating_point() else v.contiguous() for k, v in bbs[0].model.state_dict().items()}
    save_file(state, str(path))  # other weights under the same file name
    assert remembered_backbones(staged, tiny_cfg.cache_dir) is None
