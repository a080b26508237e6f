"""Answer the site's ClientApp tasks inside the SuperNode process: no Runtime API round trips per message.

With ``--isolation process`` Flower's SuperNode keeps each pulled message for a ClientApp process, which fetches
it over the SuperNode's local Runtime API (claim the task, pull its inputs, the message and each of its objects,
confirm, push the reply and each of its objects, push the task's output, heartbeats: a dozen HTTP requests per
message) and the SuperNode polls for the reply. On a deployment that cost about 0.25 s per round and site on top of
the computation (bench/deployed.py, profiled with py-spy).

:func:`install` makes the SuperNode answer each task itself, right after pulling it and before waiting for the
reply: the same Runtime API handlers Flower's HTTP server calls, called in-process through :class:`LocalRuntime`,
and the same answer as the separate runner (:func:`xincept.client.runner.answer_task`): the installed xincept
ClientApp, the server's app bundle read only as data. Torch, the site's cached features and its standardised inputs
stay loaded in this one process for the whole run.

Where the installed Flower no longer has these internals, :func:`install` changes nothing and returns False; the
site then answers from a separate runner process (``xincept.client.runner``), as it does when asked to
(``xincept-client join --separate-runner``).
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any, Callable

from xincept.flower_runtime import InProcessRuntime, task_handlers

log = logging.getLogger(__name__)


def node_handlers() -> dict[str, Callable] | None:
    """The SuperNode's Runtime API handlers a ClientApp task uses (None where the installed Flower lacks one)."""
    try:
        from flwr.supernode.servicer.runtime import runtime_handlers as node
    except ImportError:
        return None
    return task_handlers(node)


class LocalRuntime(InProcessRuntime):
    """The SuperNode's Runtime API for one claimed task, as direct calls on its NodeState, so Flower's own
    ``pull_task_input``/``push_message``/``push_task_output`` work on it unchanged."""

    def __init__(self, state: Any, task: Any) -> None:
        super().__init__(state, task, node_handlers() or {})


def handlers_available() -> bool:
    """Whether the installed Flower has every Runtime API handler :class:`LocalRuntime` and the claim call."""
    try:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # noqa: F401  pylint: disable=E0611
        from flwr.supercore.constant import TaskType  # noqa: F401
        from flwr.supercore.servicer.runtime import runtime_handlers as core
    except ImportError:
        return False
    return node_handlers() is not None and callable(getattr(core, "acquire_task", None))


def answer_pending(state: Any, app: Callable) -> int:
    """Claim and answer every pending ClientApp task of ``state``; the number answered."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.supercore.servicer.runtime import runtime_handlers as core

    from xincept.client.runner import answer_task

    answered = 0
    while True:
        res = core.acquire_task(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value], agentapp_fab_hashes=[]),
                                state)
        if not res.HasField("task"):
            return answered
        try:
            answer_task(app, LocalRuntime(state, res.task))
        except Exception:  # noqa: BLE001 (Flower's handlers refused a step; the SuperNode must keep serving)
            log.exception("site: answering task %s failed", res.task.task_id)
        answered += 1


def installed_app() -> Callable:
    """The installed ClientApp (imports torch: called once, before the first message arrives)."""
    from xincept.client.app import app

    return app


def install(module: ModuleType | None = None, app: Callable[[], Callable] = installed_app) -> bool:
    """Answer tasks inside Flower's SuperNode loop (``module``: ``flwr.supernode.start_client_internal``).

    Wraps the loop's ``_push_messages``, which runs right after a message is pulled and waits for its reply: the
    wrapper answers the pending task first, so the reply is there at once. False, and nothing changed, where the
    loop or the handlers are not what this was written for.
    """
    if module is None:
        try:
            from flwr.supernode import start_client_internal as module  # type: ignore[no-redef]
        except ImportError:
            return False
    push = getattr(module, "_push_messages", None)
    if push is None or getattr(push, "_xincept_in_supernode", False) or not handlers_available():
        return False
    client_app = app()

    @functools.wraps(push)
    def push_messages(*args, **kwargs):
        state = kwargs.get("state", args[0] if args else None)
        if state is not None:
            answer_pending(state, client_app)
        return push(*args, **kwargs)

    push_messages._xincept_in_supernode = True  # type: ignore[attr-defined]
    module._push_messages = push_messages  # type: ignore[attr-defined]
    return True
