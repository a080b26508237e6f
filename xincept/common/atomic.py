"""Write files and folders so that an interruption never leaves half-written output."""

from __future__ import annotations

import os
import shutil
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    ``mode`` (e.g. 0o600 for keys, ledgers and caches) applies from the start: the temporary file is
    created private (mkstemp) and only ever widened to ``mode``, never readable by others in between.
    Without it, the umask's usual permissions.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, (0o666 & ~_UMASK) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), mode)


def write_json_atomic(path: Path, obj: Any, mode: int | None = None) -> None:
    from xincept.common.strict_json import dumps

    write_text_atomic(path, dumps(obj, indent=2, sort_keys=False) + "\n", mode)


def write_with_atomic(path: Path, writer: Callable[[Path], None]) -> None:
    """Let ``writer`` fill a temporary path, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def require_writable(folder: Path, option: str) -> Path:
    """``folder``, created if missing, once a file can be written in it; a one-line SettingError naming ``option``, the
    folder and the fix otherwise (a read-only mount, another user's folder, a full disk)."""
    import tempfile

    from xincept.common.errors import SettingError

    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise SettingError(f"{option} {folder} cannot be written ({exc.strerror or exc}): give a folder this user can write, "
                           "on a disk with free space (check its permissions and mount)") from None
    return folder
