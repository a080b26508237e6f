"""Flower app bundles (FABs) for tests: what `xincept-server start` submits, and variations of it."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path


def zip_bundle(files: dict[str, str]) -> bytes:
    """A FAB holding ``files`` and, as Flower's do, ``.info/CONTENT``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(".info/CONTENT", "hashes")
    return buf.getvalue()


def our_bundle_files(folder: Path, **settings) -> dict[str, str]:
    """The files `xincept-server start` puts in its FAB, for FedSettings(**settings)."""
    from xincept.common.fedconfig import FedSettings
    from xincept.server.superlink import write_app_dir

    return {p.name: p.read_text() for p in write_app_dir(folder / "app", FedSettings(**settings)).iterdir()}
