"""Shorter waits in Flower's object transfer, for deployments whose every round is a synchronous trip.

Flower moves a message as a tree of objects. A receiver may list a message before all its objects have
arrived (a SuperNode registers a message before it has pulled its arrays from the SuperLink; a reply is
listed before its arrays are pushed), and Flower's ``pull_objects`` then backs off 1 s, 2 s, 4 s ... per
missing object. On a 1.1 MB head that costs about 3 s on every hop of every round, while the arrays
arrive within milliseconds (bench/deployed.py).

:func:`shorten_pull_backoff` wraps a module's pull function so retries start at ``PULL_BACKOFF_S`` and
never wait more than ``PULL_BACKOFF_CAP_S``; the number of tries and the overall time limit stay Flower's.
It is applied where each process pulls: the site's runner (its ClientApp inputs), the SuperNode
(``xincept.client.fast_supernode``) and the ServerApp's grid (``xincept.server.app``).
"""

from __future__ import annotations

import functools
from types import ModuleType

PULL_BACKOFF_S = 0.01
PULL_BACKOFF_CAP_S = 0.25


def shorten_pull_backoff(module: ModuleType, name: str) -> bool:
    """Replace ``module.name`` (a Flower pull function with ``initial_backoff``/``backoff_cap`` keywords) by one
    with short backoffs. False, and nothing changed, where the function is missing or already wrapped."""
    fn = getattr(module, name, None)
    if fn is None or getattr(fn, "_xincept_short_backoff", False):
        return False

    @functools.wraps(fn)
    def pull(*args, **kwargs):
        kwargs.setdefault("initial_backoff", PULL_BACKOFF_S)
        kwargs.setdefault("backoff_cap", PULL_BACKOFF_CAP_S)
        return fn(*args, **kwargs)

    pull._xincept_short_backoff = True  # type: ignore[attr-defined]
    setattr(module, name, pull)
    return True
