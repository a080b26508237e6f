"""Flower's Runtime API for one task, as direct calls on a state: the in-process paths of the SuperNode
(:mod:`xincept.client.in_supernode`) and of the SuperLink (:mod:`xincept.server.in_superlink`).

An :class:`InProcessRuntime` has the methods of Flower's ``RuntimeHttpClient`` that a task uses, each calling the
handler the HTTP server would call for that request, so Flower's own task code works on it unchanged.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Callable, Mapping

# RuntimeHttpClient method -> handler name, the same in the SuperNode's and in the SuperLink's handler module
TASK_METHODS = {"PullTaskInput": "pull_task_input", "PushTaskOutput": "push_task_output", "PullMessages": "pull_messages",
                "PushMessages": "push_messages", "PullObject": "pull_object", "PushObject": "push_object",
                "ConfirmMessageReceived": "confirm_message_received"}
CORE_METHODS = {"SendTaskHeartbeat": "send_task_heartbeat", "PushLogs": "push_logs"}  # Flower's shared task handlers


def task_handlers(api: ModuleType, extra: Mapping[str, str] | None = None) -> dict[str, Callable] | None:
    """Method name -> handler: ``api``'s (the SuperNode's or the SuperLink's Runtime API handlers, plus ``extra``)
    and Flower's shared ones; None where the installed Flower lacks one."""
    try:
        from flwr.supercore.servicer.runtime import runtime_handlers as core
    except ImportError:
        return None
    table = {method: getattr(api, name, None) for method, name in {**TASK_METHODS, **(extra or {})}.items()}
    table.update({method: getattr(core, name, None) for method, name in CORE_METHODS.items()})
    return table if all(callable(fn) for fn in table.values()) else None


class InProcessRuntime:
    """The Runtime API for one claimed ``task`` on ``state``: each method calls its handler directly."""

    def __init__(self, state: Any, task: Any, handlers: Mapping[str, Callable]) -> None:
        for method, fn in handlers.items():
            setattr(self, method, functools.partial(fn, state=state, task=task))

    def close(self) -> None:
        """Nothing to close (the HTTP client's counterpart)."""
