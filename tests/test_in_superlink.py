"""The SuperLink runs xincept's ServerApp in its own process, from a bundle it reads only as data."""

from __future__ import annotations

import hashlib
import logging
import types
from pathlib import Path

import pytest

from tests.bundles import our_bundle_files, zip_bundle
from xincept.server import in_superlink


class FakeLinkRuntime:
    """Answers a ServerApp task's Runtime API calls as the SuperLink's handlers would, and records what it was told."""

    outputs: list = []
    logs: list[str] = []
    content: bytes = b""

    def __init__(self, state, task) -> None:
        pass

    def PullTaskInput(self, request):
        from flwr.app import Context, RecordDict
        from flwr.common.serde import context_to_proto, fab_to_proto, run_to_proto
        from flwr.proto.runtime_pb2 import PullTaskInputResponse  # pylint: disable=E0611
        from flwr.supercore.fab import Fab
        from flwr.supercore.run import Run

        run = Run.create_empty(7)
        run.fab_hash = hashlib.sha256(self.content).hexdigest()
        context = Context(run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config={})
        return PullTaskInputResponse(context=context_to_proto(context), run=run_to_proto(run),
                                     fab=fab_to_proto(Fab(run.fab_hash, self.content, {})), task_id=11)

    def PushTaskOutput(self, request):
        FakeLinkRuntime.outputs.append(request)

    def PushLogs(self, request):
        FakeLinkRuntime.logs.extend(request.logs)

    def SendTaskHeartbeat(self, request):
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatResponse  # pylint: disable=E0611

        return SendTaskHeartbeatResponse(success=True)


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(in_superlink, "LinkRuntime", FakeLinkRuntime)
    FakeLinkRuntime.outputs, FakeLinkRuntime.logs = [], []
    return FakeLinkRuntime


def test_the_serverapp_runs_in_process_with_the_runs_config_and_its_log_reaches_the_task_log(tmp_path: Path, runtime) -> None:
    from flwr.common.constant import SubStatus

    runtime.content = zip_bundle(our_bundle_files(tmp_path, rounds=3))
    seen = {}

    def server_app(grid, context):
        seen.update(rounds=context.run_config["rounds"], run=grid.run.run_id, client=grid._runtime_client)
        logging.getLogger("xincept.server.federation").info("round 1/3 done")

    assert in_superlink.run_task(None, None, app=lambda: server_app)
    assert seen["rounds"] == 3 and seen["run"] == 7 and isinstance(seen["client"], FakeLinkRuntime)  # no HTTP client
    assert any("round 1/3 done" in line for line in runtime.logs)
    assert runtime.outputs[-1].sub_status == SubStatus.COMPLETED
    assert not any(isinstance(h, in_superlink.TaskLogHandler) for h in logging.getLogger("xincept").handlers)


def test_a_bundle_with_code_is_never_run_by_the_superlink(tmp_path: Path, runtime) -> None:
    from flwr.common.constant import SubStatus

    runtime.content = zip_bundle({**our_bundle_files(tmp_path, rounds=3), "evil.py": "import os"})
    ran = []
    assert not in_superlink.run_task(None, None, app=lambda: lambda grid, context: ran.append(1))
    assert not ran
    out = runtime.outputs[-1]
    assert out.sub_status == SubStatus.FAILED and "evil.py" in out.details and "this SuperLink accepts only" in out.details


def test_a_failing_serverapp_marks_the_task_failed_and_the_superlink_goes_on(tmp_path: Path, runtime) -> None:
    from flwr.common.constant import SubStatus

    runtime.content = zip_bundle(our_bundle_files(tmp_path, rounds=3))

    def broken(grid, context):
        raise RuntimeError("too few sites")

    assert not in_superlink.run_task(None, None, app=lambda: broken)
    assert runtime.outputs[-1].sub_status == SubStatus.FAILED and "too few sites" in runtime.outputs[-1].details


def test_install_starts_the_serverapp_thread_once_the_superlinks_state_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    monkeypatch.setattr(in_superlink, "serve", lambda factory, stop, app: started.append((factory, app)))
    made = types.SimpleNamespace(state=types.SimpleNamespace(linkstate_factory="the link state"))
    module = types.SimpleNamespace(create_app=lambda *a, **k: made)
    assert in_superlink.install(module, app="the app")
    assert not in_superlink.install(module)  # once
    assert module.create_app("config") is made
    made.state.xincept_serverapp_stop.set()
    import time

    for _ in range(50):
        if started:
            break
        time.sleep(0.01)
    assert started == [("the link state", "the app")]
    assert not in_superlink.install(types.SimpleNamespace())  # a Flower without create_app: SuperExec as shipped


def test_installed_flower_has_what_the_in_process_serverapp_calls() -> None:
    """Fails when a Flower upgrade moves these internals (the SuperLink would then start a flwr-serverapp per run)."""
    import importlib
    import inspect

    from flwr.superlink import main as superlink_main

    flower_superlink = importlib.import_module("flwr.superlink.cli.flower_superlink")

    assert in_superlink.handlers_available()
    assert "from flwr.superlink.main import" in inspect.getsource(flower_superlink._run_superlink_http_api)
    assert "linkstate_factory" in inspect.getsource(superlink_main.create_app)


def test_a_serverapp_that_cannot_load_fails_each_run_instead_of_leaving_it_pending(tmp_path: Path, runtime, monkeypatch) -> None:
    import threading

    from flwr.common.constant import SubStatus
    from flwr.superlink.servicer.runtime import runtime_handlers as link

    runtime.content = zip_bundle(our_bundle_files(tmp_path, rounds=3))
    tasks = [types.SimpleNamespace(task_id=11, run_id=7)]
    stop = threading.Event()

    def acquire(request, state):
        from flwr.proto.runtime_pb2 import AcquireTaskResponse  # pylint: disable=E0611
        from flwr.proto.task_pb2 import Task  # pylint: disable=E0611

        if not tasks:
            stop.set()
            return AcquireTaskResponse()
        tasks.pop()
        return AcquireTaskResponse(task=Task(task_id=11, run_id=7), token="t")

    def broken_install():
        raise ImportError("xincept.server.app: torch is missing")

    monkeypatch.setattr(link, "acquire_task", acquire)
    in_superlink.serve(types.SimpleNamespace(state=lambda: None), stop, app=broken_install)
    assert runtime.outputs[-1].sub_status == SubStatus.FAILED and "torch is missing" in runtime.outputs[-1].details
