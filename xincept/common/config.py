"""Settings parsed once into frozen dataclasses."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xincept.common.errors import SettingError

THESIS_BACKBONES: tuple[str, str] = ("legacy_xception", "inception_v3")
ALL_CLASSES: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")


def default_cache_dir() -> Path:
    """Where embeddings are cached: ``$XINCEPT_CACHE_DIR`` or ``~/.cache/xincept``."""
    env = os.environ.get("XINCEPT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xincept"


@dataclass(frozen=True)
class BackboneConfig:
    """Which frozen backbones embed images, and with which weights."""

    names: tuple[str, ...] = THESIS_BACKBONES
    input_size: int = 224
    pretrained: bool = True
    weights_dir: Path | None = None
    random_backbones: tuple[str, ...] = ()  # random weights for these only, the others pretrained (said explicitly)
    batch_size: int = 32
    num_workers: int = 0
    device: str = "auto"
    precision: str = "auto"  # "auto": fastest correct path for the hardware; "fp32": force float32

    def __post_init__(self) -> None:
        if self.input_size < 75:
            raise SettingError(f"input_size={self.input_size}: at least 75 px is needed (InceptionV3's minimum)")
        if not self.names:
            raise SettingError("at least one backbone name is needed")
        if self.precision not in ("auto", "fp32"):
            raise SettingError(f"precision={self.precision!r}: choose 'auto' or 'fp32'")
        unknown = [n for n in self.random_backbones if n not in self.names]
        if unknown:
            raise SettingError(f"--random-backbones {','.join(unknown)}: not among the backbones ({','.join(self.names)}); "
                               "name only backbones the run uses")

    def is_random(self, name: str) -> bool:
        """Whether backbone ``name`` gets random weights: all with --no-pretrained, else those named in --random-backbones."""
        return not self.pretrained or name in self.random_backbones


@dataclass(frozen=True)
class HeadConfig:
    """Fused dense head (thesis Algorithm 1's layers) and how it is trained.

    The layers are Algorithm 1's. The training recipe is not (bench/ablation.py, docs/RESULTS.md): Adam with batch
    32, weight decay 1e-4, label smoothing 0.1 and a fixed 30 epochs, without Algorithm 1's Keras L2 0.01 on the
    K-wide layers, without input dropout and without early stopping. ``ALGORITHM1_RECIPE`` gives the thesis' one.
    """

    activation: str = "relu"
    branch_width: int = 64
    fusion_widths: tuple[int, int] = (128, 64)
    l2: float = 0.0  # Keras-style L2 on the K-wide layers (Algorithm 1: 0.01)
    dropout: float = 0.0  # on standardised inputs; no weights, so the layers are unchanged
    weight_decay: float = 1e-4
    lr: float = 1e-3
    batch_size: int = 32
    label_smoothing: float = 0.1
    max_epochs: int = 30
    patience: int = 0  # 0: no early stopping (train max_epochs, keep the last epoch); else stop after this many bad epochs
    seed: int = 0

    def __post_init__(self) -> None:
        if self.activation not in ("relu", "gelu"):
            raise SettingError(f"activation={self.activation!r}: choose 'relu' or 'gelu'")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise SettingError(f"label_smoothing={self.label_smoothing}: choose a value in [0, 1)")
        if self.max_epochs < 1 or self.patience < 0:
            raise SettingError(f"max_epochs={self.max_epochs}, patience={self.patience}: need max_epochs >= 1, patience >= 0")


# Thesis Algorithm 1's training recipe (Keras L2 0.01, input dropout 0.5, batch 64, early stopping on validation loss)
ALGORITHM1_RECIPE: dict = {"l2": 0.01, "dropout": 0.5, "weight_decay": 0.0, "batch_size": 64, "label_smoothing": 0.0,
                           "max_epochs": 100, "patience": 20}


def head_recipe_changes(name: str) -> dict:
    """HeadConfig changes for a named recipe: ``default`` (none) or ``algorithm1`` (the thesis')."""
    if name not in ("default", "algorithm1"):
        raise SettingError(f"--head-recipe {name!r}: choose default or algorithm1")
    return dict(ALGORITHM1_RECIPE) if name == "algorithm1" else {}


XGB_MARGINS = ("head", "none")  # where XGBoost's boosting starts: the head's logits, or a constant


@dataclass(frozen=True)
class XGBConfig:
    """XGBoost on shared embeddings."""

    n_estimators: int = 300
    max_depth: int = 4
    learning_rate: float = 0.1
    subsample: float = 1.0  # <1 samples rows per site in federated histogram mode, so predictions drift from centralized
    colsample_bytree: float = 1.0
    max_bin: int = 256
    early_stopping_rounds: int = 30
    features: str = "branches"  # the branches' 64-wide activations; or embedding (64-wide fusion layer), logits, fused (raw)
    margin: str = "head"  # head: boost from the head's logits (base_margin), trees correct the head | none: from a constant
    seed: int = 0
    select: str = "xgboost"  # xgboost: XGBoost ships (the thesis) | best-val: XGBoost or the head's softmax, the better on validation

    def __post_init__(self) -> None:
        if self.features not in ("embedding", "branches", "logits", "fused"):
            raise SettingError(f"xgb features={self.features!r}: choose embedding, branches, logits or fused")
        if self.margin not in XGB_MARGINS:
            raise SettingError(f"xgb-margin={self.margin!r}: choose head (boost from the head's logits) or none")
        if self.select not in ("best-val", "xgboost"):
            raise SettingError(f"select-classifier={self.select!r}: choose best-val or xgboost")


@dataclass(frozen=True)
class SplitConfig:
    """Grouped, stratified, deterministic splits."""

    folds: int = 5
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    group_block: int = 25

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise SettingError(f"folds={self.folds}: at least 2 folds are needed")
        if not 0 < self.val_fraction < 0.5:
            raise SettingError(f"val_fraction={self.val_fraction}: choose a value in (0, 0.5)")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmented views per training image (thesis Table 3.2); 0 turns augmentation off."""

    views: int = 0
    seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    xgb: XGBConfig = field(default_factory=XGBConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache_dir: Path = field(default_factory=default_cache_dir)

    def to_dict(self) -> dict:
        def fix(v: object) -> object:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, tuple):
                return list(v)
            if isinstance(v, dict):
                return {k: fix(x) for k, x in v.items()}
            return v

        return fix(asdict(self))  # type: ignore[return-value]
