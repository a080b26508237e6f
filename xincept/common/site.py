"""A site's data, checked and embedded: the starting point of every training command."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xincept.common.backbones import (Backbone, load_backbones, random_warning, remember_backbones,
                                      remembered_backbones)
from xincept.common.config import RunConfig
from xincept.common.data import SiteData, require_usable, scan_site
from xincept.common.embed import Embeddings, ModelsNeeded, embed_records

log = logging.getLogger(__name__)


@dataclass
class EmbeddedSite:
    data: SiteData
    backbones: list[Backbone]
    embeddings: Embeddings
    embed_seconds: float

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @property
    def y(self) -> np.ndarray:
        return np.array([r.label for r in self.data.records], dtype=np.int64)

    @property
    def groups(self) -> list[str]:
        return [r.group for r in self.data.records]

    @property
    def feats(self) -> list[np.ndarray]:
        return [self.embeddings.base[b.name] for b in self.backbones]

    @property
    def views(self) -> list[np.ndarray] | None:
        return [self.embeddings.views[b.name] for b in self.backbones] if self.embeddings.views else None


def embedding_path(cfg: RunConfig) -> dict:
    """The numerics used to embed, recorded in model.json so results can be traced."""
    from xincept.common.numerics import choose_path

    return choose_path(cfg.backbone).describe()


def weights_meta(backbones: list[Backbone] | list[dict]) -> dict:
    """What every output says about the backbones' weights.

    ``weights``: "random" (all random), "pretrained" (none random) or "mixed" (some random, asked for with
    --random-backbones); ``backbone_weights``: each backbone's own label ("imagenet (keras)", "random", ...);
    ``warning`` names the random ones.
    """
    per = {b["name"]: b["weights"] for b in backbones} if backbones and isinstance(backbones[0], dict) \
        else {b.name: b.weights for b in backbones}  # type: ignore[union-attr]
    random = [n for n, w in per.items() if w == "random"]
    label = "random" if len(random) == len(per) else "mixed" if random else "pretrained"
    return {"weights": label, "backbone_weights": per, **({"warning": random_warning(random)} if random else {})}


def weights_label(meta: dict) -> str:
    """One line for summaries from a metrics.json or model.json: ``legacy_xception imagenet (keras), inception_v3 random``."""
    per = meta.get("backbone_weights")
    return ", ".join(f"{n} {w}" for n, w in per.items()) if per else str(meta.get("weights"))


def prepare_site(data_dir: Path, cfg: RunConfig, classes: list[str] | None = None, manifest: Path | None = None,
                 show_progress: bool = True, allow_outside: bool = False,
                 check: Callable[[SiteData], None] | None = None) -> EmbeddedSite:
    """Check the data folder (and ``check`` it, before any backbone is built), then embed every image through the cache."""
    data = scan_site(Path(data_dir), classes, manifest, cfg.split.group_block, show_progress, allow_outside)
    require_usable(data)
    if check is not None:
        check(data)
    t0 = time.perf_counter()
    # every image cached (a rerun, a site's runner, a simulated site): the backbones' descriptors are enough, and the
    # networks are never built; otherwise build them, embed what is missing and remember their descriptors
    backbones = remembered_backbones(cfg.backbone, cfg.cache_dir)
    try:
        if backbones is None:
            raise ModelsNeeded("no descriptor of these backbones in the cache")
        emb = embed_records(data.records, backbones, cfg.cache_dir, cfg.backbone, cfg.augment.views, cfg.augment.seed, show_progress)
    except ModelsNeeded as why:
        log.debug("building the backbones: %s", why)
        backbones = load_backbones(cfg.backbone)
        t0 = time.perf_counter()
        emb = embed_records(data.records, backbones, cfg.cache_dir, cfg.backbone, cfg.augment.views, cfg.augment.seed, show_progress)
        remember_backbones(backbones, cfg.backbone, cfg.cache_dir)
    seconds = time.perf_counter() - t0
    log.log(logging.INFO if emb.computed else logging.DEBUG, "embeddings ready: %d images, %d computed now, %.1f s",
            len(data.records), emb.computed, seconds)
    return EmbeddedSite(data=data, backbones=backbones, embeddings=emb, embed_seconds=seconds)
