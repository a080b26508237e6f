"""xincept.flower_compat: the one module that touches Flower's internals, applied only on the tested release."""

from __future__ import annotations

import logging
import re
import subprocess
import types
from pathlib import Path

import pytest

from xincept import flower_compat as fc

ROOT = Path(__file__).resolve().parents[1]


class FakeTime:
    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_idle_site_keeps_flowers_three_seconds_and_active_site_polls_fast() -> None:
    fake = FakeTime()
    clock = fc.AdaptiveClock(real=fake, window_s=10.0)
    clock.sleep(fc.IDLE_PULL_S)  # no run yet: Flower's own interval
    assert fake.slept == [3.0]
    clock.sleep(fc.REPLY_WAIT_S)  # a message is being answered
    clock.sleep(fc.IDLE_PULL_S)  # waiting for the next round
    assert fake.slept[1:] == [fc.REPLY_POLL_S, fc.ACTIVE_POLL_S]
    fake.now += 11.0  # the run ended long ago
    clock.sleep(fc.IDLE_PULL_S)
    assert fake.slept[-1] == 3.0
    assert clock.monotonic() == fake.now  # everything else is the real module's


def test_the_supernode_loop_is_changed_only_where_it_has_the_time_module_expected() -> None:
    import time

    calls = iter([None, 7])
    module = types.SimpleNamespace(time=time, _pull_and_store_message=lambda *a, **k: next(calls))
    assert fc.shorten_supernode_loop(module) and isinstance(module.time, fc.AdaptiveClock)
    clock = module.time
    assert module._pull_and_store_message() is None and clock.last_activity == float("-inf")
    assert module._pull_and_store_message() == 7 and time.monotonic() - clock.last_activity < 1.0  # a run is active
    assert not fc.shorten_supernode_loop(types.SimpleNamespace(time=object()))  # an unknown layout: left as it is


def test_the_node_heartbeat_is_shortened_only_where_flowers_interval_is_found() -> None:
    conn, sender = types.SimpleNamespace(HEARTBEAT_DEFAULT_INTERVAL=30), types.SimpleNamespace(HEARTBEAT_DEFAULT_INTERVAL=30)
    assert fc.shorten_heartbeat(conn, sender)
    assert conn.HEARTBEAT_DEFAULT_INTERVAL == sender.HEARTBEAT_DEFAULT_INTERVAL == fc.NODE_HEARTBEAT_S
    assert not fc.shorten_heartbeat(types.SimpleNamespace(HEARTBEAT_DEFAULT_INTERVAL=45), sender)
    from flwr.common.constant import HEARTBEAT_MIN_INTERVAL
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    assert fc.NODE_HEARTBEAT_S >= HEARTBEAT_MIN_INTERVAL  # the SuperLink refuses shorter intervals
    assert fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == heartbeat.HEARTBEAT_DEFAULT_INTERVAL == fc.FLOWER_HEARTBEAT_S


def test_a_pull_keeps_flowers_tries_and_backs_off_quickly_first() -> None:
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    seen: list[dict] = []
    module = types.SimpleNamespace(pull=lambda tree, fetch, **kw: seen.append(kw) or fetch("x"))
    assert fc.shorten_pull_backoff(module, "pull")
    assert not fc.shorten_pull_backoff(module, "pull")  # already wrapped
    assert not fc.shorten_pull_backoff(module, "missing")
    assert module.pull("tree", lambda oid: b"ok") == b"ok"
    assert seen[0]["initial_backoff"] == fc.SLOW_FIRST_S and "backoff_cap" not in seen[0]  # Flower's cap and tries
    assert "max_time" not in seen[0]  # Flower's time limit, unless the role sets one
    runner = types.SimpleNamespace(pull=lambda tree, fetch, **kw: seen.append(kw) or fetch("x"))
    assert fc.shorten_pull_backoff(runner, "pull", max_time=fc.RUNNER_PULL_MAX_S)
    runner.pull("tree", lambda oid: b"ok")
    assert seen[-1]["max_time"] == fc.RUNNER_PULL_MAX_S  # a task whose run ended is given up, not waited on for 2 h
    from flwr.common.constant import ErrorCode

    from xincept.server import context

    # a reply whose sender died mid-upload comes back as Flower's MESSAGE_UNAVAILABLE: a lost site, not a failed run
    assert (context.MESSAGE_UNAVAILABLE, context.NODE_UNAVAILABLE) == (ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.NODE_UNAVAILABLE)
    assert fc.SERVERAPP_PULL_MAX_S <= 300

    fake, tries = FakeTime(), []

    def fetch(oid: str) -> bytes:
        tries.append(fake.now)
        if fake.now < 0.1:
            raise ObjectUnavailableError(oid)
        return b"arrived"

    pull = fc.quick_retries(fetch, clock=fake.monotonic, sleep=fake.sleep)
    assert pull("a") == b"arrived" and fake.now < 0.2  # picked up within ms of arriving, not after Flower's 1 s

    def never(oid: str) -> bytes:
        tries.append(fake.now)
        raise ObjectUnavailableError(oid)

    pull, before = fc.quick_retries(never, clock=fake.monotonic, sleep=fake.sleep), len(tries)
    with pytest.raises(ObjectUnavailableError):  # quick tries for half a second, then Flower's backoff takes over
        pull("b")
    assert fake.now - tries[before] <= fc.QUICK_WINDOW_S and len(tries) - before <= 16
    fake.now, before = fake.now + 1.0, len(tries)
    with pytest.raises(ObjectUnavailableError):  # asked again later: one try (the caller's backoff spaces them)
        pull("b")
    assert len(tries) - before == 1


def test_a_run_that_ends_while_its_message_is_received_fails_the_receive_like_any_failed_pull() -> None:
    """Flower's RunNotRunningException is a BaseException: its SuperNode's receive ignores the message but leaves the
    task open, and the site's runner waits for arrays that never come. Wrapped, it is an Exception, which the
    receive's own clean-up catches (message, objects and task dropped)."""
    from flwr.supercore.run import RunNotRunningException

    def pull(ids, pull_object_fn):
        raise RunNotRunningException

    module = types.SimpleNamespace(pull_objects=pull, RunNotRunningException=RunNotRunningException)
    assert fc.run_end_as_failure(module, "pull_objects") and not fc.run_end_as_failure(module, "pull_objects")
    with pytest.raises(fc.RunEndedWhileReceiving, match="the run ended"):
        module.pull_objects([], lambda oid: b"")
    assert issubclass(fc.RunEndedWhileReceiving, Exception)
    assert not fc.run_end_as_failure(types.SimpleNamespace(pull_objects=pull), "pull_objects")  # no such exception there


def test_flowers_tested_release_still_has_what_the_module_changes() -> None:
    """Fails when a Flower upgrade moves what flower_compat changes (it would then change nothing on that release)."""
    import inspect

    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal as sci
    from flwr.supernode.runtime import run_clientapp

    assert fc.is_tested()  # pyproject pins flwr to a tested release
    src = inspect.getsource(sci)
    assert "time.sleep(3)" in src and "time.sleep(0.5)" in src and callable(sci._pull_and_store_message)
    # the receive's clean-up catches Exception only, and the run's end is not one (run_end_as_failure's reason)
    assert "except Exception as err" in src and not issubclass(sci.RunNotRunningException, Exception)
    for fn in (http_grid.pull_objects, sci.pull_objects, run_clientapp.pull_and_inflate_object_from_tree):
        assert {"initial_backoff", "pull_object_fn"} <= set(inspect.signature(inspect.unwrap(fn)).parameters)


def test_an_untested_flower_gets_nothing_patched_and_one_warning(monkeypatch, caplog) -> None:
    import flwr
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal as sci
    from flwr.supernode.runtime import run_clientapp

    before = (sci.time, sci._pull_and_store_message, sci.pull_objects, http_grid.pull_objects,
              run_clientapp.pull_and_inflate_object_from_tree)
    monkeypatch.setattr(flwr, "__version__", "9.9.0")
    monkeypatch.setattr(fc, "_warned", set())
    assert not fc.is_tested() and fc.is_tested("1.42.3") and not fc.is_tested("1.420.0")
    with caplog.at_level(logging.WARNING, logger="xincept.flower_compat"):
        assert [fc.apply(role) for role in fc.ROLES] == [False, False, False]
    warnings = [r for r in caplog.records if "not a release xincept was tested with" in r.getMessage()]
    assert len(warnings) == 1 and "9.9.0" in warnings[0].getMessage()
    after = (sci.time, sci._pull_and_store_message, sci.pull_objects, http_grid.pull_objects,
             run_clientapp.pull_and_inflate_object_from_tree)
    assert all(a is b for a, b in zip(before, after))  # Flower as shipped
    with pytest.raises(ValueError, match="role"):
        fc.apply("superlink")


def test_only_the_compat_module_and_the_runner_touch_flowers_internals() -> None:
    found = subprocess.run(["grep", "-rlE", r"flwr\.(supernode|superlink|supercore|server\.run_serverapp)", "xincept/"],
                           cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert sorted(f for f in found if f.endswith(".py")) == ["xincept/client/runner.py", "xincept/flower_compat.py"]
    # no other module assigns to an attribute of a Flower module
    assign = re.compile(r"^\s*(flwr|sci|start_client_internal|http_grid|run_clientapp|module)\.\w+\s*=[^=]", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "xincept").rglob("*.py")
                 if p.name != "flower_compat.py" and assign.search(p.read_text())]
    assert offenders == []
    for gone in ("client/in_supernode.py", "client/fast_supernode.py", "server/in_superlink.py", "server/fast_superlink.py",
                 "flower_runtime.py", "flower_waits.py"):
        assert not (ROOT / "xincept" / gone).exists(), gone


def test_pyproject_pins_flower_to_the_tested_release() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    flwr = [d for d in project["dependencies"] if d.startswith("flwr")]
    assert len(flwr) == 1 and all(f">={m}" in flwr[0] for m in fc.TESTED) and "<1.43" in flwr[0]
    assert project["requires-python"] == ">=3.11"  # the code imports tomllib
    constraints = (ROOT / "deploy" / "constraints.txt").read_text()
    assert re.search(r"^flwr(\[simulation\])?==1\.42\.\d+$", constraints, re.M)
    assert "config" not in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]


def test_a_finished_task_is_given_up_by_the_runner_not_answered_with_sigint() -> None:
    """Flower's HTTP retry sends SIGINT to its own process on 401 (meant for one ClientApp process per task); the site's
    runner serves every task in one process, so a task the SuperNode finished (its run ended) is given up instead."""
    import httpx

    from xincept.client.runner import task_giveup

    def status(code: int) -> httpx.HTTPStatusError:
        req = httpx.Request("POST", "http://127.0.0.1/v1/runtime/pull-object")
        return httpx.HTTPStatusError("x", request=req, response=httpx.Response(code, request=req))

    flowers: list[Exception] = []
    giveup = task_giveup(lambda exc: flowers.append(exc) or False)
    assert giveup(status(401)) and flowers == []  # never reaches Flower's SIGINT
    assert not giveup(status(503)) and len(flowers) == 1  # the rest: Flower's decision
    assert task_giveup(None)(status(401)) and not task_giveup(None)(status(503))


def test_a_finished_tasks_heartbeat_goes_quiet_instead_of_raising() -> None:
    import httpx

    from xincept.client.runner import until_finished

    req = httpx.Request("POST", "http://127.0.0.1/v1/runtime/send-task-heartbeat")
    calls: list[int] = []

    def beat_401() -> bool:
        calls.append(1)
        raise httpx.HTTPStatusError("x", request=req, response=httpx.Response(401, request=req))

    beat = until_finished(beat_401)
    assert beat() and beat() and len(calls) == 1  # asked once, then quiet
    assert until_finished(lambda: False)() is False  # Flower's own answers pass through

    def beat_500() -> bool:
        raise httpx.HTTPStatusError("x", request=req, response=httpx.Response(500, request=req))

    with pytest.raises(httpx.HTTPStatusError):
        until_finished(beat_500)()
