"""``flower-supernode`` that asks for the next message quickly while a run is active.

Flower's SuperNode sleeps 3 s whenever the SuperLink has no message for it, and polls its own ClientApp's reply
every 0.5 s. In a federation every round waits for the slowest site, and the next round's message arrives
just after the site's previous reply, so those sleeps (not the computation) set the deployed round time: about
3-4 s per round where the simulation needs a fraction of a second (bench/deployed.py).

It also decides who answers the site's tasks: the SuperNode process itself (:mod:`xincept.client.in_supernode`),
or a separate runner process it starts (``xincept.client.runner``; ``join --separate-runner`` or an incompatible
Flower).

This wrapper runs Flower's own SuperNode entry point unchanged, with its sleeps shortened only while work is
flowing: within ``ACTIVE_WINDOW_S`` of the last message, an empty pull waits ``ACTIVE_POLL_S`` instead of 3 s
and the reply poll waits ``REPLY_POLL_S``. An idle site falls back to Flower's 3 s, so a site waiting for the
next run adds no load to the SuperLink. Where the installed Flower no longer has these sleeps, the SuperNode
runs as shipped (correct, only slower) and a warning says so.

    python -m xincept.client.fast_supernode [flower-supernode options]
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

log = logging.getLogger("xincept.client.fast_supernode")  # not __name__: run as __main__ (python -m)

IDLE_PULL_S = 3.0  # Flower's sleep after an empty pull (flwr.supernode.start_client_internal)
REPLY_WAIT_S = 0.5  # Flower's sleep while it waits for the ClientApp's reply
ACTIVE_POLL_S = 0.05  # our pull interval while a run is active
REPLY_POLL_S = 0.01
ACTIVE_WINDOW_S = 120.0  # how long after the last message a site keeps polling fast


class AdaptiveClock:
    """Stands in for the ``time`` module inside Flower's SuperNode loop; only ``sleep`` differs."""

    def __init__(self, real: ModuleType = time, window_s: float = ACTIVE_WINDOW_S) -> None:
        self._real, self.window_s = real, window_s
        self.last_activity = float("-inf")

    def __getattr__(self, name: str):  # monotonic, time, ... are the real module's
        return getattr(self._real, name)

    def sleep(self, seconds: float) -> None:
        now = self._real.monotonic()
        if seconds == REPLY_WAIT_S:  # a message was pulled and is being answered: the run is active
            self.last_activity = now
            self._real.sleep(REPLY_POLL_S)
        elif seconds == IDLE_PULL_S and now - self.last_activity < self.window_s:
            self._real.sleep(ACTIVE_POLL_S)
        else:
            self._real.sleep(seconds)


def install(module: ModuleType | None = None) -> bool:
    """Give Flower's SuperNode loop an :class:`AdaptiveClock`; False (and nothing changed) where it does not fit."""
    if module is None:
        try:
            from flwr.supernode import start_client_internal as module  # type: ignore[no-redef]
        except ImportError:
            return False
    if getattr(module, "time", None) is not time:
        return False
    clock = AdaptiveClock()
    module.time = clock  # type: ignore[attr-defined]
    pull = getattr(module, "_pull_and_store_message", None)
    if pull is not None:  # a pulled message marks the run active, even when its reply is ready at once

        def pull_and_mark(*args, **kwargs):
            run_id = pull(*args, **kwargs)
            if run_id is not None:
                clock.last_activity = clock.monotonic()
            return run_id

        module._pull_and_store_message = pull_and_mark  # type: ignore[attr-defined]
    from xincept.flower_waits import shorten_pull_backoff

    shorten_pull_backoff(module, "pull_objects")  # the message's arrays, from the SuperLink
    return True


SEPARATE_RUNNER_ENV = "XINCEPT_SEPARATE_RUNNER"  # "1": answer from a separate runner process (join --separate-runner)


def runtime_api_address(argv: list[str]) -> str:
    """The SuperNode's Runtime API address from its own options (``--host``, ``--port``; Flower's defaults otherwise)."""
    import argparse

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", default="9094")
    known, _ = ap.parse_known_args(argv)
    return f"{known.host}:{known.port}"


SECRET_ENV = "XINCEPT_RUNTIME_SECRET_FILE"  # the separate runner signs its task requests with this file's secret


def runtime_secret(folder: Path) -> Path:
    """A fresh random secret for the SuperNode's local Runtime API, in ``folder`` (mode 0600).

    Flower's SuperNode answers "give me a task" (AcquireTask) on 127.0.0.1 to any local process unless it holds a
    SuperExec secret; with one, only requests signed with it get a task (and the task token every later request
    needs). Without it another user's process on the hospital's machine could take the server's message and
    answer in the site's name, around the site's policy checks. The site's own answers never use the API (they
    run inside the SuperNode, or in the runner, which gets the file through ``SECRET_ENV``).
    """
    from xincept.common.runtime_secret import write_runtime_secret

    return write_runtime_secret(folder)


def start_runner(address: str, secret: Path) -> subprocess.Popen:
    """The separate runner (``xincept.client.runner``): answers tasks over the Runtime API and exits with this process."""
    env = {**os.environ, SECRET_ENV: str(secret)}
    return subprocess.Popen([sys.executable, "-m", "xincept.client.runner", address, str(os.getpid())], env=env)


def main() -> None:
    from xincept.common.cli import log_xincept_to_stderr

    log_xincept_to_stderr()
    if not install():
        log.warning("this Flower version has no SuperNode poll loop to shorten: the SuperNode runs as shipped "
                    "(3 s between polls; rounds take longer)")
    from flwr.common.logger import update_console_handler
    from flwr.supernode.cli import flower_supernode

    from xincept.client import in_supernode

    update_console_handler(timestamps=True, colored=False)  # an operator reading the site's log needs the time of each step
    private = Path(tempfile.mkdtemp(prefix="xincept-supernode-"))  # mode 0700: this user only
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    if "--superexec-auth-secret-file" in sys.argv:  # given by the operator: the runner signs with that one
        secret = Path(sys.argv[sys.argv.index("--superexec-auth-secret-file") + 1])
    else:
        secret = runtime_secret(private)
        sys.argv += ["--superexec-auth-secret-file", str(secret)]
    if os.environ.get(SEPARATE_RUNNER_ENV) == "1":
        log.info("site: answering tasks from a separate runner process (--separate-runner)")
        start_runner(runtime_api_address(sys.argv[1:]), secret)
    elif in_supernode.install():
        log.info("site: answering tasks inside the SuperNode process with the installed xincept code")
    else:
        log.warning("this Flower version's SuperNode cannot answer tasks in-process: answering from a separate runner "
                    "process (slower per round)")
        start_runner(runtime_api_address(sys.argv[1:]), secret)

    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
