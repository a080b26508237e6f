from __future__ import annotations

import os
from pathlib import Path

import pytest

from xincept.common.synthetic import write_image_folder

os.environ.setdefault("XINCEPT_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub during tests

TINY_BACKBONES = ("test_resnet", "test_efficientnet")
ALL4 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "all4"


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "site", per_class=10)


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    """A fast configuration: tiny random backbones at 80 px, small folds, short training."""
    from xincept.common.config import BackboneConfig, HeadConfig, RunConfig, SplitConfig, XGBConfig

    return RunConfig(
        backbone=BackboneConfig(names=TINY_BACKBONES, input_size=80, pretrained=False, batch_size=16),
        head=HeadConfig(max_epochs=30, patience=5),
        xgb=XGBConfig(n_estimators=40, early_stopping_rounds=10),
        split=SplitConfig(folds=3, group_block=2, val_fraction=0.25),
        cache_dir=tmp_path / "cache",
    )


@pytest.fixture
def all4() -> Path:
    if not ALL4.is_dir():
        pytest.skip(f"real ALL data not found at {ALL4} (see ../shared/datasets/all4/README.md)")
    return ALL4
