"""Embed site images once through every frozen backbone, through the on-disk cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xincept.common.augment import augment
from xincept.common.backbones import Backbone
from xincept.common.cache import FeatureCache
from xincept.common.config import BackboneConfig
from xincept.common.data import ImageRecord
from xincept.common.errors import DataError
from xincept.common.numerics import EmbedPath, choose_path
from xincept.common.progress import track

log = logging.getLogger(__name__)


@dataclass
class Embeddings:
    """Pooled features per backbone: ``base[name]`` is (N, F); ``views[name]`` is (N, V, F)."""

    base: dict[str, np.ndarray]
    views: dict[str, np.ndarray]
    computed: int  # how many (image, view) items were embedded now rather than read from cache
    path: EmbedPath | None = None  # the numerics the features were computed with


class _ImageViews:
    """torch Dataset of (image path, sha256, view) -> one tensor per backbone."""

    def __init__(self, items: list[tuple[Path, str, int]], transforms: list, seed: int) -> None:
        self.items, self.transforms, self.seed = items, transforms, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        path, sha, view = self.items[i]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except Exception as exc:
            raise DataError(f"image {path} became unreadable during embedding ({exc}); rerun `xincept-client check`") from exc
        if view > 0:
            rgb = augment(rgb, sha, view, self.seed)
        return tuple(t(rgb) for t in self.transforms)


class ModelsNeeded(Exception):
    """An image is missing from the cache, and the backbones were given without their networks."""


def embed_records(
    records: list[ImageRecord],
    backbones: list[Backbone],
    cache_root: Path,
    cfg: BackboneConfig,
    views: int = 0,
    aug_seed: int = 0,
    show_progress: bool = True,
) -> Embeddings:
    """Return pooled features for every record (and ``views`` augmented views each).

    Only images missing from the cache go through the backbones; duplicates are embedded once. Backbones without
    their networks (:func:`~xincept.common.backbones.remembered_backbones`) serve a fully cached set; where an
    image is missing, :class:`ModelsNeeded` is raised before anything is computed.
    """
    path = choose_path(cfg)
    caches = [FeatureCache(cache_root, b.cache_key + path.cache_tag, meta={**b.describe(), "embedding_path": path.describe()}) for b in backbones]
    first_path: dict[str, Path] = {}
    for r in records:
        first_path.setdefault(r.sha256, r.path)
    wanted = [(sha, v) for sha in first_path for v in range(views + 1)]
    todo = [(first_path[sha], sha, v) for sha, v in wanted if not all(c.has(sha, v, aug_seed) for c in caches)]
    _compute(todo, backbones, caches, path, cfg.num_workers, aug_seed, len(wanted), show_progress)
    loaded, damaged = _load(caches, wanted, aug_seed)
    if damaged:  # entries unreadable since the check above are embedded again
        log.warning("recomputing %d damaged cache entries", len(damaged))
        _compute([(first_path[sha], sha, v) for sha, v in damaged], backbones, caches, path, cfg.num_workers, aug_seed, len(wanted), show_progress)
        loaded, damaged = _load(caches, wanted, aug_seed)
        todo += damaged
    base, aug = {}, {}
    for b, table in zip(backbones, loaded):
        base[b.name] = np.stack([table[(r.sha256, 0)] for r in records])
        if views:
            aug[b.name] = np.stack([np.stack([table[(r.sha256, v)] for v in range(1, views + 1)]) for r in records])
    return Embeddings(base=base, views=aug, computed=len(todo), path=path)


def _load(caches: list[FeatureCache], wanted: list[tuple[str, int]], seed: int):
    tables: list[dict[tuple[str, int], np.ndarray]] = []
    damaged: set[tuple[str, int]] = set()
    for cache in caches:
        table = {}
        for sha, v in wanted:
            f = cache.get(sha, v, seed)
            if f is None:
                damaged.add((sha, v))
            else:
                table[(sha, v)] = f
        tables.append(table)
    return tables, sorted(damaged)


def _compute(todo: list[tuple[Path, str, int]], backbones: list[Backbone], caches: list[FeatureCache],
             path: EmbedPath, num_workers: int, aug_seed: int, n_wanted: int, show_progress: bool) -> None:
    """Run the backbones over ``todo`` and store every result in the caches."""
    if not todo:
        return
    if any(b.model is None for b in backbones):
        raise ModelsNeeded(f"{len(todo)} image view(s) are not in the embedding cache")
    import torch
    from torch.utils.data import DataLoader

    log.info("embedding %d image view(s) through %s on %s, %s (%d cached)", len(todo), [b.name for b in backbones],
             path.device, path.dtype, n_wanted - len(todo))
    loader = DataLoader(
        _ImageViews(todo, [b.transform for b in backbones], aug_seed),
        batch_size=path.batch_size,
        num_workers=num_workers,
        pin_memory=path.device.startswith("cuda"),
    )
    models = [path.prepare(b.model) for b in backbones]
    batches = prefetch(loader) if path.prefetch and num_workers == 0 else iter(loader)
    batches = track(batches, "embedding images", total=len(loader)) if show_progress else batches
    start = 0
    with torch.inference_mode(), path.autocast():
        for batch in batches:
            n = batch[0].shape[0]
            for model, cache, x in zip(models, caches, batch):
                feats = model(path.to_input(x)).float().cpu().numpy()
                for (_, sha, v), f in zip(todo[start : start + n], feats):
                    cache.put(sha, f, v, aug_seed)
            start += n


def prefetch(iterable, depth: int = 2):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead (decoding overlaps compute)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in iterable:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
