"""The SuperNode wrapper shortens Flower's poll sleeps only while a run is active."""

from __future__ import annotations

import types

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
