"""The one place (beside the site runner) that touches Flower's non-public names: shorter waits for a deployment.

Every federated round is a synchronous trip to every hospital, and three of Flower's waits, not the computation,
set a deployed round's time (bench/deployed.py):

- the SuperNode sleeps 3 s whenever the SuperLink has no message for it, and 0.5 s between looks at its
  ClientApp's reply, although the next round's message arrives just after the site's previous reply;
- a receiver may list a message before all of its objects have arrived, and Flower's object pull then backs off
  1 s, 2 s, 4 s ... per missing object, while the arrays arrive within milliseconds;
- when the server restarts while a SuperNode is receiving a message, the SuperLink answers that the message's run is
  no longer running; Flower's SuperNode then ignores the message but leaves its task open (its
  ``RunNotRunningException`` is a ``BaseException``, outside the clean-up of a failed receive), and the site's
  runner waits for arrays that never come before it takes the next run's first message (45 s to 90 s of every
  server restart; tests/test_e2e.py's server-killed test).

:func:`apply` shortens them in the calling process, for one ``role``:

- ``"supernode"`` (``python -m xincept.flower_compat flower-supernode ...``, started by ``xincept-client join``): the
  SuperNode's loop polls every ``ACTIVE_POLL_S`` while a run is active (within ``ACTIVE_WINDOW_S`` of its last
  message; an idle site keeps Flower's 3 s and adds no load), its reply poll takes ``REPLY_POLL_S``, its
  object pulls retry quickly, a receive that the run's end interrupts is cleaned up like any failed receive
  (:func:`run_end_as_failure`: the message, its objects and its task are dropped), and its node heartbeat comes every ``NODE_HEARTBEAT_S`` (the SuperLink's minimum)
  instead of 30 s, so a site that dies is offline, and named by the server, within about 20 s, not a minute;
- ``"serverapp"`` (``xincept.server.app``, loaded by Flower's ``flwr-serverapp``): the grid's object pulls;
- ``"runner"`` (``xincept.client.runner``): the ClientApp inputs' object pulls.

It applies only when the installed Flower is a release CI ran (:data:`TESTED`); on any other release it changes
nothing, logs one warning per process, and Flower runs as shipped (correct, with Flower's own waits). An object
pull keeps Flower's number of tries and its overall time limit; only the first half-second is spent in quick
retries (:func:`quick_retries`), so a slow hospital upload is waited for as long as Flower would.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from types import ModuleType
from typing import Callable

log = logging.getLogger("xincept.flower_compat")  # not __name__: also run as __main__ (python -m)

TESTED = ("1.42",)  # Flower minor releases CI runs (pyproject pins flwr to them)
ROLES = ("supernode", "serverapp", "runner")

IDLE_PULL_S = 3.0  # Flower's sleep after an empty pull (flwr.supernode.start_client_internal)
REPLY_WAIT_S = 0.5  # Flower's sleep while it waits for the ClientApp's reply
ACTIVE_POLL_S = 0.05  # our pull interval while a run is active
REPLY_POLL_S = 0.01
ACTIVE_WINDOW_S = 120.0  # how long after the last message a site keeps polling fast
FLOWER_HEARTBEAT_S = 30  # Flower's node heartbeat interval: a dead site goes offline after 2 x 30 s
NODE_HEARTBEAT_S = 10  # ours (the SuperLink's minimum): a dead site is offline, and named, within about 20 s

QUICK_FIRST_S = 0.005
QUICK_GROWTH = 1.5
QUICK_CAP_S = 0.05
QUICK_WINDOW_S = 0.5
SLOW_FIRST_S = 0.25
# The runner's wait for a message's arrays at its own SuperNode (Flower's: 2 h). The SuperNode hands the runner a
# task before it holds the arrays; when the server restarts meanwhile, the SuperNode drops the message of the ended
# run but not the task, and the runner (one task at a time) would wait out Flower's 2 h while the new run's messages
# queue behind it. A head message's arrays are about 1 MB.
RUNNER_PULL_MAX_S = 90.0
# The ServerApp pulls a site's reply the same way: a site that dies while uploading its reply leaves a message whose
# arrays never arrive, and Flower's grid would wait up to 2 h for them; after this it gets Flower's
# MESSAGE_UNAVAILABLE reply instead, which the run treats as a lost site (xincept.server.context). Generous for a
# slow hospital link: a head reply is about 1 MB.
SERVERAPP_PULL_MAX_S = 120.0

_warned: set[str] = set()


def flower_version() -> str:
    import flwr

    return str(getattr(flwr, "__version__", "unknown"))


def is_tested(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed Flower's) is a minor release CI ran."""
    version = flower_version() if version is None else version
    return any(version == minor or version.startswith(minor + ".") for minor in TESTED)


def apply(role: str) -> bool:
    """Shorten Flower's waits in this process for ``role`` (one of :data:`ROLES`); False, with one warning per
    process, and nothing changed, on a Flower release CI did not run."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {ROLES}")
    version = flower_version()
    if not is_tested(version):
        if not _warned:
            log.warning("Flower %s is not a release xincept was tested with (%s): Flower's own waits apply (correct, "
                        "slower rounds); install with deploy/constraints.txt for the tested one", version, ", ".join(TESTED))
        _warned.add(role)
        return False
    if role == "supernode":
        from flwr.supercore import heartbeat
        from flwr.supernode import fleet_http_connection, start_client_internal

        shorten_heartbeat(fleet_http_connection, heartbeat)
        return shorten_supernode_loop(start_client_internal)
    if role == "serverapp":
        from flwr.superlink.grid import http_grid

        return shorten_pull_backoff(http_grid, "pull_objects", max_time=SERVERAPP_PULL_MAX_S)
    from flwr.supernode.runtime import run_clientapp

    return shorten_pull_backoff(run_clientapp, "pull_and_inflate_object_from_tree", max_time=RUNNER_PULL_MAX_S)


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


def shorten_supernode_loop(module: ModuleType) -> bool:
    """Give Flower's SuperNode loop (``module``: ``flwr.supernode.start_client_internal``) an :class:`AdaptiveClock`
    and quick object pulls; False, and nothing changed, where it does not have the ``time`` module it expects."""
    if getattr(module, "time", None) is not time:
        return False
    clock = AdaptiveClock()
    module.time = clock  # type: ignore[attr-defined]
    pull = getattr(module, "_pull_and_store_message", None)
    if pull is not None:  # a pulled message marks the run active, even when its reply is ready at once

        @functools.wraps(pull)
        def pull_and_mark(*args, **kwargs):
            run_id = pull(*args, **kwargs)
            if run_id is not None:
                clock.last_activity = clock.monotonic()
            return run_id

        module._pull_and_store_message = pull_and_mark  # type: ignore[attr-defined]
    shorten_pull_backoff(module, "pull_objects")  # the message's arrays, from the SuperLink
    run_end_as_failure(module, "pull_objects")
    return True


class RunEndedWhileReceiving(RuntimeError):
    """The run of a message ended (the server restarted or stopped it) while the SuperNode pulled the message's arrays."""


def run_end_as_failure(module: ModuleType, name: str) -> bool:
    """Make ``module.name`` raise :class:`RunEndedWhileReceiving` (an ``Exception``) where Flower's raises its
    ``RunNotRunningException`` (a ``BaseException``), so that the SuperNode's receive treats the run's end like any
    failed pull: it deletes the message and its objects and finishes the task; a runner that took the task already
    is then refused (401) and abandons it (xincept.client.runner.task_giveup) instead of waiting for its arrays. False, and nothing changed, where the function or the exception is missing."""
    fn = getattr(module, name, None)
    ended = getattr(module, "RunNotRunningException", None)
    if fn is None or ended is None or getattr(fn, "_xincept_run_end", False):
        return False

    @functools.wraps(fn)
    def pull(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ended as exc:
            raise RunEndedWhileReceiving("the run ended (the server restarted or stopped it) while its message was "
                                         "received; the message is dropped") from exc

    pull._xincept_run_end = True  # type: ignore[attr-defined]
    setattr(module, name, pull)
    return True


def shorten_heartbeat(connection: ModuleType, sender: ModuleType) -> bool:
    """The SuperNode announces (``connection``) and sends (``sender``) node heartbeats every ``NODE_HEARTBEAT_S``
    instead of Flower's 30 s, so the server names a site that died within seconds, not after a minute. False, and
    nothing changed, where either module lacks Flower's interval."""
    if not (getattr(connection, "HEARTBEAT_DEFAULT_INTERVAL", None) == FLOWER_HEARTBEAT_S
            and getattr(sender, "HEARTBEAT_DEFAULT_INTERVAL", None) == FLOWER_HEARTBEAT_S):
        return False
    connection.HEARTBEAT_DEFAULT_INTERVAL = NODE_HEARTBEAT_S  # type: ignore[attr-defined]
    sender.HEARTBEAT_DEFAULT_INTERVAL = NODE_HEARTBEAT_S  # type: ignore[attr-defined]
    return True


def quick_retries(pull_object_fn: Callable[[str], bytes], clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> Callable[[str], bytes]:
    """``pull_object_fn`` that retries a missing object quickly for ``QUICK_WINDOW_S`` after it was first asked for;
    later calls for that object make one attempt each (the caller's backoff spaces them)."""
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    first_asked: dict[str, float] = {}
    lock = threading.Lock()

    def pull(object_id: str) -> bytes:
        with lock:
            start = first_asked.setdefault(object_id, clock())
        delay = QUICK_FIRST_S
        while True:
            try:
                return pull_object_fn(object_id)
            except ObjectUnavailableError:
                if clock() - start + delay > QUICK_WINDOW_S:
                    raise
                sleep(delay)
                delay = min(delay * QUICK_GROWTH, QUICK_CAP_S)

    return pull


def shorten_pull_backoff(module: ModuleType, name: str, max_time: float | None = None) -> bool:
    """Replace ``module.name`` (a Flower pull function taking ``pull_object_fn`` as its second argument, and
    ``initial_backoff``) by one with the quick phase first (and, given ``max_time``, that gives up after it). False,
    and nothing changed, where the function is missing or already wrapped."""
    fn = getattr(module, name, None)
    if fn is None or getattr(fn, "_xincept_short_backoff", False):
        return False

    @functools.wraps(fn)
    def pull(*args, **kwargs):
        if "pull_object_fn" in kwargs:
            kwargs["pull_object_fn"] = quick_retries(kwargs["pull_object_fn"])
        elif len(args) > 1:
            args = (args[0], quick_retries(args[1]), *args[2:])
        kwargs.setdefault("initial_backoff", SLOW_FIRST_S)
        if max_time is not None:
            kwargs.setdefault("max_time", max_time)
        return fn(*args, **kwargs)

    pull._xincept_short_backoff = True  # type: ignore[attr-defined]
    setattr(module, name, pull)
    return True


def main() -> None:
    """``python -m xincept.flower_compat flower-supernode [its options]``: Flower's own SuperNode entry point, after
    :func:`apply` ("supernode"), with timestamps on its log lines (an operator reading a site's log needs them)."""
    from xincept.common.cli import log_xincept_to_stderr

    if len(sys.argv) < 2 or sys.argv[1] != "flower-supernode":
        sys.exit("usage: python -m xincept.flower_compat flower-supernode [flower-supernode options]")
    log_xincept_to_stderr()
    apply("supernode")
    from flwr.common.logger import update_console_handler
    from flwr.supernode.cli import flower_supernode

    update_console_handler(timestamps=True, colored=False)
    sys.argv = ["flower-supernode", *sys.argv[2:]]
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
