"""Shorter waits in Flower's object transfer, for deployments whose every round is a synchronous trip.

Flower moves a message as a tree of objects. A receiver may list a message before all its objects have
arrived (a SuperNode lists a message while the ServerApp is still pushing its arrays; a reply is listed before
its arrays are pushed), and Flower's ``pull_objects`` then backs off 1 s, 2 s, 4 s ... (up to 10 s, 500 tries)
per missing object. On a 1.1 MB head that cost about 3 s on every hop of every round, while the arrays arrive
within tens of milliseconds (bench/deployed.py).

:func:`shorten_pull_backoff` wraps a module's pull function in two phases:

- quick: for ``QUICK_WINDOW_S`` after an object is first asked for, a missing object is asked for again after
  5 ms, growing by half each time up to ``QUICK_CAP_S`` (about 15 requests at most), so an object that arrives
  within a round's time is picked up within a few milliseconds of arriving;
- patient: after that, Flower's own backoff from ``SLOW_FIRST_S``, doubling to Flower's cap, with Flower's number
  of tries and overall time limit: a slow upload (a hospital on a slow link) is waited for as long as Flower would,
  without flooding the SuperLink with requests.

It is applied where each process pulls: the SuperNode (``xincept.client.fast_supernode``), the ServerApp's grid
(``xincept.server.app``) and the separate runner (``xincept.client.runner``, its ClientApp inputs).
"""

from __future__ import annotations

import functools
import threading
import time
from types import ModuleType
from typing import Callable

QUICK_FIRST_S = 0.005
QUICK_GROWTH = 1.5
QUICK_CAP_S = 0.05
QUICK_WINDOW_S = 0.5
SLOW_FIRST_S = 0.25


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


def shorten_pull_backoff(module: ModuleType, name: str) -> bool:
    """Replace ``module.name`` (a Flower pull function taking ``pull_object_fn`` as its second argument, and
    ``initial_backoff``) by one with the quick phase first. False, and nothing changed, where the function is
    missing or already wrapped."""
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
        return fn(*args, **kwargs)

    pull._xincept_short_backoff = True  # type: ignore[attr-defined]
    setattr(module, name, pull)
    return True
