"""Run the ServerApp inside the SuperLink process: the server's side of a round makes no Runtime API requests.

Flower's SuperLink starts a SuperExec, which starts a ``flwr-serverapp`` process per run; that process talks to the
SuperLink over its Runtime API (HTTP over TLS, on the same port as the sites): pushing each round's message and
its objects, polling for replies, pulling each reply's objects and confirming them. That was about 40 of the
about 100 requests of a round, served by the same single Python process that serves the sites
(bench/deployed.py, profiled with py-spy), and it put several request latencies on every round's critical path.

:func:`install` (called by ``xincept.server.fast_superlink``) starts a thread in the SuperLink process that takes
each ServerApp task from the SuperLink's own state, as the SuperExec would, and runs xincept's installed ServerApp
with Flower's ``HttpGrid`` whose Runtime API client is :class:`LinkRuntime`: the same Runtime API handlers the
SuperLink's HTTP server calls, called in-process. The submitted app bundle is read only as data
(:func:`xincept.common.fab.check_fab`): the SuperLink runs xincept's ServerApp or nothing, never code from a bundle.
The run's log lines reach ``flwr run --stream`` (and so ``xincept-server start``'s output) through the task log.

Where the installed Flower lacks these internals, :func:`install` returns False and the SuperLink runs as shipped
(with its SuperExec and a ``flwr-serverapp`` process per run).
"""

from __future__ import annotations

import functools
import logging
import threading
from types import ModuleType
from typing import Any, Callable

from xincept.flower_runtime import InProcessRuntime, task_handlers

log = logging.getLogger("xincept.server.in_superlink")

POLL_S = 0.2  # how often the thread asks the SuperLink's state for a new run


def link_handlers() -> dict[str, Callable] | None:
    """The SuperLink's Runtime API handlers a ServerApp task uses (None where the installed Flower lacks one)."""
    try:
        from flwr.superlink.servicer.runtime import runtime_handlers as link
    except ImportError:
        return None
    return task_handlers(link, extra={"GetNodes": "get_nodes"})


class LinkRuntime(InProcessRuntime):
    """The SuperLink's Runtime API for one ServerApp task, as direct calls on its LinkState (what ``HttpGrid`` and a
    ServerApp task call)."""

    def __init__(self, state: Any, task: Any) -> None:
        super().__init__(state, task, link_handlers() or {})


class TaskLogHandler(logging.Handler):
    """xincept's log lines of a run into the SuperLink's task log, which ``flwr run --stream`` prints."""

    def __init__(self, runtime: LinkRuntime) -> None:
        super().__init__(logging.INFO)
        self.runtime = runtime
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        from flwr.proto.log_pb2 import PushLogsRequest  # pylint: disable=E0611

        try:
            self.runtime.PushLogs(PushLogsRequest(logs=[self.format(record) + "\n"]))
        except Exception:  # noqa: BLE001 (a log line must never stop the run)
            self.handleError(record)


def handlers_available() -> bool:
    """Whether the installed Flower has everything :func:`run_task` calls."""
    try:
        from flwr.common.config import get_fused_config_from_fab  # noqa: F401
        from flwr.proto.log_pb2 import PushLogsRequest  # noqa: F401  pylint: disable=E0611
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # noqa: F401  pylint: disable=E0611
        from flwr.server.run_serverapp import run  # noqa: F401
        from flwr.supercore.constant import TaskType
        from flwr.superlink.grid.http_grid import HttpGrid
        from flwr.superlink.servicer.runtime import runtime_handlers as link
    except ImportError:
        return False
    return (link_handlers() is not None and callable(getattr(link, "acquire_task", None))
            and hasattr(TaskType, "SERVER_APP") and isinstance(getattr(HttpGrid, "_runtime_client", None), property))


def in_process_grid(runtime: LinkRuntime):
    """Flower's ``HttpGrid``, its Runtime API client being ``runtime`` (it never opens a connection)."""
    from flwr.superlink.grid.http_grid import HttpGrid

    grid = HttpGrid(token="in-process")
    grid._client = runtime  # pylint: disable=protected-access (what HttpGrid._connect would set: its Runtime API client)
    return grid


def run_task(state: Any, task: Any, app: Callable[[], Any]) -> bool:
    """Run one ServerApp task to its end (as ``flwr-serverapp`` would); True when the ServerApp completed."""
    from flwr.app import RecordDict
    from flwr.common.config import get_fused_config_from_fab
    from flwr.common.constant import SubStatus
    from flwr.common.serde import context_from_proto, context_to_proto, fab_from_proto, run_from_proto
    from flwr.proto.runtime_pb2 import PullTaskInputRequest, PushTaskOutputRequest  # pylint: disable=E0611
    from flwr.server.run_serverapp import run as run_serverapp
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.task_identity import TaskIdentity

    from xincept.common.fab import check_fab

    runtime = LinkRuntime(state, task)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(runtime))
    heartbeat.start()
    handler = TaskLogHandler(runtime)
    xlog = logging.getLogger("xincept")
    level = xlog.level
    context, status, details = None, SubStatus.FAILED, "ServerApp failed"
    try:
        res = runtime.PullTaskInput(PullTaskInputRequest())
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
        context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
        check_fab(fab.content, who="this SuperLink")
        context.run_config = get_fused_config_from_fab(fab.content, run)
        grid = in_process_grid(runtime)
        grid.set_run(run)
        xlog.addHandler(handler)
        if xlog.getEffectiveLevel() > logging.INFO:  # the run's progress is what `flwr run --stream` shows
            xlog.setLevel(logging.INFO)
        log.info("run %s: the ServerApp runs inside the SuperLink process", run.run_id)
        run_serverapp(grid=grid, context=context, server_app_dir="", loaded_server_app=app())
        status, details = SubStatus.COMPLETED, ""
        context.state = RecordDict()  # as flwr-serverapp: the resulting context is not kept
    except Exception as exc:  # noqa: BLE001 (the SuperLink must keep serving; the run is marked failed)
        log.exception("the ServerApp failed")
        details = f"ServerApp failed with exception: {exc}"
    finally:
        xlog.removeHandler(handler)
        xlog.setLevel(level)
        if heartbeat.is_running:
            heartbeat.stop()
        try:
            runtime.PushTaskOutput(PushTaskOutputRequest(context=context_to_proto(context) if context else None,
                                                         sub_status=status, details=details))
        except Exception:  # noqa: BLE001
            log.exception("could not record the end of the ServerApp task")
    return status == SubStatus.COMPLETED


def installed_app():
    """xincept's ServerApp (imports torch)."""
    from xincept.server.app import app

    return app


def serve(state_factory: Any, stop: threading.Event, app: Callable[[], Any] = installed_app) -> None:
    """Take ServerApp tasks from the SuperLink's state and run each, until ``stop`` is set."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.superlink.servicer.runtime import runtime_handlers as link

    try:
        app()  # torch and the ServerApp loaded before the first run arrives
    except Exception:  # noqa: BLE001 (each run then fails with this error, and says so, instead of waiting forever)
        log.exception("the installed ServerApp cannot be loaded")
    state = state_factory.state()
    while not stop.is_set():
        try:
            res = link.acquire_task(AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP.value],
                                                       agentapp_fab_hashes=[]), state)
        except Exception:  # noqa: BLE001
            log.exception("could not ask the SuperLink's state for a run")
            stop.wait(POLL_S)
            continue
        if res.HasField("task"):
            run_task(state, res.task, app)
        else:
            stop.wait(POLL_S)


def install(module: ModuleType | None = None, app: Callable[[], Any] = installed_app) -> bool:
    """Start :func:`serve` in a thread once the SuperLink has created its app and state (``module``:
    ``flwr.superlink.main``). False, and nothing changed, where the installed Flower does not fit."""
    if module is None:
        try:
            from flwr.superlink import main as module  # type: ignore[no-redef]
        except ImportError:
            return False
    create = getattr(module, "create_app", None)
    if create is None or getattr(create, "_xincept_in_superlink", False) or not handlers_available():
        return False

    @functools.wraps(create)
    def create_app(*args, **kwargs):
        fastapi_app = create(*args, **kwargs)
        stop = threading.Event()
        threading.Thread(target=serve, args=(fastapi_app.state.linkstate_factory, stop, app), name="xincept-serverapp",
                         daemon=True).start()
        fastapi_app.state.xincept_serverapp_stop = stop
        return fastapi_app

    create_app._xincept_in_superlink = True  # type: ignore[attr-defined]
    module.create_app = create_app  # type: ignore[attr-defined]
    return True
