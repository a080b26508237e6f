"""The SuperNode wrapper shortens Flower's poll sleeps only while a run is active."""

from __future__ import annotations

import types

import pytest

from xincept.client import fast_supernode as fs


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
    clock = fs.AdaptiveClock(real=fake, window_s=10.0)
    clock.sleep(fs.IDLE_PULL_S)  # no run yet: Flower's own interval
    assert fake.slept == [3.0]
    clock.sleep(fs.REPLY_WAIT_S)  # a message is being answered
    clock.sleep(fs.IDLE_PULL_S)  # waiting for the next round
    assert fake.slept[1:] == [fs.REPLY_POLL_S, fs.ACTIVE_POLL_S]
    fake.now += 11.0  # the run ended long ago
    clock.sleep(fs.IDLE_PULL_S)
    assert fake.slept[-1] == 3.0
    assert clock.monotonic() == fake.now  # everything else is the real module's


def test_install_replaces_only_the_time_module_it_expects() -> None:
    import time

    module = types.SimpleNamespace(time=time)
    assert fs.install(module) and isinstance(module.time, fs.AdaptiveClock)
    assert not fs.install(types.SimpleNamespace(time=object()))  # an unknown Flower layout: left as it is


def test_installed_flower_still_has_the_loop_the_wrapper_shortens() -> None:
    """Fails when a Flower upgrade moves the SuperNode's sleeps: the wrapper would then silently do nothing."""
    import inspect

    from flwr.supernode import start_client_internal as sci

    src = inspect.getsource(sci)
    assert sci.time is __import__("time") and "time.sleep(3)" in src and "time.sleep(0.5)" in src


def test_pull_backoff_is_shortened_once_and_keeps_explicit_values() -> None:
    from xincept import flower_waits

    seen = []
    module = types.SimpleNamespace(pull=lambda *a, **k: seen.append((a, k)) or "ok")
    assert flower_waits.shorten_pull_backoff(module, "pull")
    assert not flower_waits.shorten_pull_backoff(module, "pull")  # already wrapped
    assert not flower_waits.shorten_pull_backoff(module, "missing")
    fetch = {"a": b"1"}.__getitem__
    assert module.pull(["a"], pull_object_fn=fetch) == "ok"
    args, kwargs = seen[-1]
    assert kwargs["initial_backoff"] == flower_waits.SLOW_FIRST_S and "backoff_cap" not in kwargs  # Flower's cap and tries
    assert kwargs["pull_object_fn"]("a") == b"1" and kwargs["pull_object_fn"] is not fetch
    module.pull("tree", fetch, "confirm", initial_backoff=2.0)  # positional pull function (the runner's inflate)
    args, kwargs = seen[-1]
    assert kwargs["initial_backoff"] == 2.0 and args[1]("a") == b"1" and args[2] == "confirm"


def test_a_missing_object_is_retried_quickly_then_left_to_flowers_backoff() -> None:
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    from xincept import flower_waits

    fake = FakeTime()
    arrives_at = {"soon": 0.03, "late": 60.0}
    tries = []

    def fetch(object_id: str) -> bytes:
        tries.append((object_id, fake.now))
        if fake.now < arrives_at[object_id]:
            raise ObjectUnavailableError(object_id)
        return object_id.encode()

    pull = flower_waits.quick_retries(fetch, clock=fake.monotonic, sleep=fake.sleep)
    assert pull("soon") == b"soon"  # picked up within one short wait of arriving
    assert fake.now - arrives_at["soon"] < 0.02 and len(tries) < 8
    start, before = fake.now, len(tries)
    with pytest.raises(ObjectUnavailableError):  # still missing after the quick window: Flower's backoff takes over
        pull("late")
    assert fake.now - start <= flower_waits.QUICK_WINDOW_S and len(tries) - before <= 16
    fake.now += 5.0  # Flower's backoff waited; its next try is one request, not another quick window
    before = len(tries)
    with pytest.raises(ObjectUnavailableError):
        pull("late")
    assert len(tries) - before == 1


def test_flowers_pull_functions_still_take_the_backoff_keywords() -> None:
    """Fails when a Flower upgrade renames what xincept.flower_waits wraps (it would then wrap nothing)."""
    import inspect

    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal
    from flwr.supernode.runtime import run_clientapp

    for fn in (http_grid.pull_objects, start_client_internal.pull_objects, run_clientapp.pull_and_inflate_object_from_tree):
        assert {"initial_backoff", "pull_object_fn"} <= set(inspect.signature(inspect.unwrap(fn)).parameters)


def test_a_pulled_message_marks_the_run_active() -> None:
    import time

    calls = iter([None, 7])
    module = types.SimpleNamespace(time=time, _pull_and_store_message=lambda *a, **k: next(calls))
    assert fs.install(module)
    clock = module.time
    assert module._pull_and_store_message() is None and clock.last_activity == float("-inf")
    assert module._pull_and_store_message() == 7 and time.monotonic() - clock.last_activity < 1.0


def test_the_runtime_secret_is_private_random_and_signs_only_task_requests(tmp_path, monkeypatch) -> None:
    import stat

    from xincept.client import runner

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = fs.runtime_secret(tmp_path / "a"), fs.runtime_secret(tmp_path / "b")  # xincept.common.runtime_secret
    assert stat.S_IMODE(first.stat().st_mode) == 0o600 and len(first.read_bytes()) == 32
    assert first.read_bytes() != second.read_bytes()
    with pytest.raises(FileExistsError):  # never reuses (or follows) a file that is already there
        fs.runtime_secret(tmp_path / "a")
    monkeypatch.delenv(fs.SECRET_ENV, raising=False)
    assert runner.acquire_signer() == []
    monkeypatch.setenv(fs.SECRET_ENV, str(first))
    (signer,) = runner.acquire_signer()
    assert signer._protected_methods == frozenset({"/flwr.proto.Runtime/AcquireTask"})
