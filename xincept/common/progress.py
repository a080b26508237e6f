"""Progress bars for long work (rich), on stderr so stdout stays clean for `--format json`; quiet when
XINCEPT_NO_PROGRESS is set."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    return not os.environ.get("XINCEPT_NO_PROGRESS")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar (elapsed and remaining time)."""
    if not progress_enabled():
        yield from items
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    from rich.console import Console

    with Progress(*columns, transient=False, console=Console(stderr=True)) as progress:
        yield from progress.track(items, total=total, description=description)
