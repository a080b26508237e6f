"""On-disk cache of pooled backbone features, one file per (image content, view).

Key: backbone name + weights fingerprint + preprocessing hash (the folder) and the image's
sha256 (+ augmented view index and seed) (the file). Writes are atomic, so an interrupted
embedding run leaves only complete entries and a rerun embeds only what is missing. Feature files
are mode 0600 in 0700 folders: a site's features are not readable by other users of the machine.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from xincept.common.atomic import write_bytes_atomic, write_json_atomic


class FeatureCache:
    """Features of one backbone configuration."""

    def __init__(self, root: Path, key: str, meta: dict | None = None) -> None:
        self.dir = Path(root) / key
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        meta_path = self.dir / "meta.json"
        if meta is not None and not meta_path.exists():
            write_json_atomic(meta_path, meta)

    def _path(self, sha256: str, view: int, seed: int) -> Path:
        suffix = "" if view == 0 else f".aug{seed}-{view}"
        return self.dir / sha256[:2] / f"{sha256}{suffix}.npy"

    def has(self, sha256: str, view: int = 0, seed: int = 0) -> bool:
        return self._path(sha256, view, seed).is_file()

    def get(self, sha256: str, view: int = 0, seed: int = 0) -> np.ndarray | None:
        path = self._path(sha256, view, seed)
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError):  # a damaged entry is recomputed
            path.unlink(missing_ok=True)
            return None

    def put(self, sha256: str, features: np.ndarray, view: int = 0, seed: int = 0) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(features, dtype=np.float32), allow_pickle=False)
        path = self._path(sha256, view, seed)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_bytes_atomic(path, buf.getvalue(), mode=0o600)  # a site's features: readable by its own user only

    def meta(self) -> dict:
        path = self.dir / "meta.json"
        return json.loads(path.read_text()) if path.exists() else {}
