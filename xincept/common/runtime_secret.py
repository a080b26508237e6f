"""A random secret for a Flower process's local task hand-out (Flower's SuperExec authentication)."""

from __future__ import annotations

import os
from pathlib import Path

SECRET_BYTES = 32
RUNNER_SECRET_ENV = "XINCEPT_RUNTIME_SECRET_FILE"  # the site runner signs its task requests with this file's secret


def write_runtime_secret(folder: Path) -> Path:
    """A fresh random secret in ``folder`` (mode 0600, never an existing file); pass it as ``--superexec-auth-secret-file``.

    With it, Flower's Runtime API hands a task (AcquireTask, which returns the token every later request of the task
    needs) only to requests signed with the secret; without it, to any process that can reach the API.
    """
    path = folder / "runtime-secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(SECRET_BYTES))
    return path
