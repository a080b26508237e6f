"""What a site remembers between messages and runs, on its own disk: its fixed split and its query counts.

A ClientApp may run in a fresh process for every message, so nothing of the policy's memory may live in
process memory alone. Files are private to the site's user (mode 0600, folder 0700) and every update
holds an exclusive lock, so concurrent ClientApp processes of one site cannot lose a count.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xincept.common.atomic import write_json_atomic

KEEP_RUNS = 50  # per-run records kept (the lifetime counts are kept forever)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class SiteState:
    """``state-dir/split.json`` (the site's split, fixed at first join) and ``state-dir/queries.json``."""

    def __init__(self, folder: Path) -> None:
        self.dir = private_dir(Path(folder))
        self.split_path = self.dir / "split.json"
        self.queries_path = self.dir / "queries.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with (self.dir / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def split(self) -> dict[str, Any] | None:
        return json.loads(self.split_path.read_text()) if self.split_path.is_file() else None

    def fix_split(self, values: dict[str, Any]) -> None:
        write_json_atomic(self.split_path, values, mode=0o600)

    def queries(self) -> dict[str, Any]:
        if not self.queries_path.is_file():
            return {"lifetime": {}, "runs": {}}
        return json.loads(self.queries_path.read_text())

    def save_queries(self, doc: dict[str, Any]) -> None:
        runs = doc.get("runs", {})
        if len(runs) > KEEP_RUNS:
            for key in sorted(runs, key=lambda r: runs[r].get("first", 0))[:-KEEP_RUNS]:
                del runs[key]
        write_json_atomic(self.queries_path, doc, mode=0o600)
