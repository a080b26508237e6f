"""Ctrl-C during a federation: stop at once, keep the last round's checkpoint, say how to resume.

Flower's simulation engine (Ray) does not stop cleanly on SIGINT: its actors die with tracebacks and the driver waits
for minutes. Every file xincept writes is written atomically and the server checkpoints after each round, so the
consistent state is already on disk: the handler names the command that resumes, stops every process this command
started, and exits 130 without unwinding Flower's threads.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xincept.common.errors import SettingError

CHECKPOINT = "checkpoint"


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that was run, with --resume (and without --fresh)."""
    argv = list(sys.argv if argv is None else argv)
    argv[0] = Path(argv[0]).name
    args = [a for a in argv if a != "--fresh"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(args)


def claim_out_dir(out: Path, resume: bool, fresh: bool) -> None:
    """Refuse to start over an earlier run's checkpoint unless told which: --resume continues it, --fresh discards it."""
    import shutil

    if resume and fresh:
        raise SettingError("--resume and --fresh contradict each other: choose one")
    ckpt = Path(out) / CHECKPOINT
    if fresh:  # the checkpoints and the SuperLink's state file (node registrations) of `start`
        for name in (CHECKPOINT, "checkpoint-loso"):
            shutil.rmtree(Path(out) / name, ignore_errors=True)
        for name in ("superlink.db", "node-names.json"):
            (Path(out) / "superlink" / name).unlink(missing_ok=True)
        return
    if not ckpt.exists() or resume:
        return
    raise SettingError(f"{out} holds the checkpoint of an earlier run ({ckpt}): pass --resume to continue it "
                       f"(`{resume_command()}`), or --fresh to discard it and start over")


@contextmanager
def stop_on_interrupt(out: Path) -> Iterator[None]:
    """Within the block, the first SIGINT or SIGTERM prints the resume command, stops this command's child processes
    (Ray, Flower) and exits with 130; a second signal while stopping changes nothing."""
    from xincept.common.processes import _signal_all, descendants

    stopping = {"now": False}

    def handler(signum: int, frame: object) -> None:  # noqa: ARG001
        if stopping["now"]:
            return
        stopping["now"] = True
        sys.stderr.write(f"\ninterrupted: the rounds finished so far are checkpointed in {Path(out) / CHECKPOINT}\n"
                         f"resume with: {resume_command()}\n")
        sys.stderr.flush()
        _signal_all(descendants(os.getpid()), signal.SIGKILL)
        os._exit(130)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
