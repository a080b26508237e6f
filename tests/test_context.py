"""Federation.ask: replies matched by the message they answer; a failed or vanished site named at once."""

from __future__ import annotations

import types

import pytest
from flwr.app import RecordDict

from xincept.common.fedconfig import FedSettings
from xincept.server import context
from xincept.server.context import Federation, FederationError


class ScriptedGrid:
    """Pushes get ids m0, m1, ...; each pull returns the next scripted batch; ``connected`` is what get_node_ids says."""

    def __init__(self, batches: list[list], connected: list[int]) -> None:
        self.batches, self.connected, self.pushed = batches, connected, []

    def push_messages(self, msgs):
        self.pushed += msgs
        return [f"m{i}" for i in range(len(msgs))]

    def pull_messages(self, ids):
        return self.batches.pop(0) if self.batches else []

    def get_node_ids(self):
        return list(self.connected)


def reply(to: str, src: int, error: str | None = None, code: int = 2):
    return types.SimpleNamespace(metadata=types.SimpleNamespace(reply_to_message_id=to, src_node_id=src),
                                 has_error=lambda: error is not None, error=types.SimpleNamespace(reason=error or "", code=code),
                                 content={"ok": to})


SITES = {11: "hospital-a", 22: "hospital-b", 33: "hospital-c"}


@pytest.fixture(autouse=True)
def task_identity():
    """Flower 1.42 builds a Message only inside a task (a ServerApp run); this plays one."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch):
    """A clock that moves ``step`` seconds at every reading (set ``fake_clock.step``), and sleeps that return at once."""
    clock = types.SimpleNamespace(now=0.0, step=1.0)

    def monotonic() -> float:
        clock.now += clock.step
        return clock.now

    monkeypatch.setattr(context.time, "monotonic", monotonic)
    monkeypatch.setattr(context.time, "sleep", lambda s: None)
    return clock


def fed(grid, min_sites: int = 3) -> Federation:
    return Federation(grid, dict(SITES), FedSettings(round_timeout=30, min_sites=min_sites), ["A", "B"])


def test_replies_are_matched_by_the_message_they_answer() -> None:
    grid = ScriptedGrid([[reply("m1", 0)], [reply("m0", 0), reply("m2", 0)]], list(SITES))  # src ids unreliable
    got = fed(grid).ask("evaluate.head", RecordDict())
    assert {n: r.content["ok"] for n, r in got.items()} == {11: "m0", 22: "m1", 33: "m2"}
    assert [m.metadata.dst_node_id for m in grid.pushed] == [11, 22, 33]


def test_the_first_failed_reply_stops_the_run_naming_the_site_and_its_reason() -> None:
    # Flower's own error reply for a site that went away carries node id 0: the site is named from the message it answers
    grid = ScriptedGrid([[reply("m1", 0, "Traceback ...\nMessage: rule xgb-tls: this site joins over mutual TLS only")]],
                        list(SITES))
    with pytest.raises(FederationError, match=r"train.xgb: site hospital-b failed: rule xgb-tls"):
        fed(grid).ask("train.xgb", RecordDict())


def test_a_site_that_disconnects_is_named_before_the_timeout(fake_clock) -> None:
    grid = ScriptedGrid([[reply("m0", 11)], [], [reply("m1", 22)]], [11, 22])  # hospital-c's SuperNode is gone
    with pytest.raises(FederationError, match=r"\['hospital-c'\] disconnected .*fewer than --min-sites 3"):
        fed(grid).ask("train.head", RecordDict())


def test_with_a_quorum_the_run_goes_on_without_a_lost_site(fake_clock) -> None:
    # hospital-c is gone; Flower's own error reply for it arrives later and is not taken for a refusal
    grid = ScriptedGrid([[reply("m0", 11)], [], [reply("m1", 22), reply("m2", 0, "node offline")]], [11, 22])
    federation = fed(grid, min_sites=2)
    got = federation.ask("train.head", RecordDict())
    assert sorted(got) == [11, 22]
    assert federation.nodes == {11: "hospital-a", 22: "hospital-b"}  # later phases ask the two others
    assert federation.lost == {"hospital-c": "disconnected during train.head"}


def test_flowers_node_unavailable_reply_counts_as_a_lost_site_not_a_refusal() -> None:
    from flwr.common.constant import ErrorCode

    assert context.NODE_UNAVAILABLE == ErrorCode.NODE_UNAVAILABLE
    grid = ScriptedGrid([[reply("m0", 11), reply("m2", 0, "Node Unavailable", code=ErrorCode.NODE_UNAVAILABLE), reply("m1", 22)]],
                        list(SITES))
    federation = fed(grid, min_sites=2)
    assert sorted(federation.ask("train.head", RecordDict())) == [11, 22] and "hospital-c" in federation.lost


def test_a_silent_site_is_named_at_the_timeout(fake_clock) -> None:
    fake_clock.step = 40.0
    grid = ScriptedGrid([[reply("m0", 11), reply("m1", 22)]], list(SITES))
    with pytest.raises(FederationError, match=r"no reply from site\(s\) \['hospital-c'\] within 30 s"):
        fed(grid).ask("train.head", RecordDict())


def test_config_sends_the_whole_science_settings_and_the_code_identity() -> None:
    cfg = fed(ScriptedGrid([], [])).config(split="val")
    assert cfg["xgb-mode"] == "histogram" and cfg["split"] == "val" and cfg["classes"] == ["A", "B"]
    assert "xincept-version" in cfg and "code-hash" in cfg and "out-dir" not in cfg
    assert fed(ScriptedGrid([], [])).among({11: "hospital-a"}).nodes == {11: "hospital-a"}
