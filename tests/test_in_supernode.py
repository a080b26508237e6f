"""The SuperNode answers a pulled message in its own process: Flower's real SuperNode steps and state, no network."""

from __future__ import annotations

import hashlib
import types
from pathlib import Path

import pytest

from tests.bundles import our_bundle_files, zip_bundle
from xincept.client import in_supernode


def _echo(msg, context):
    """A stand-in ClientApp: answers with what it was asked and the node it runs on."""
    from flwr.app import Message, MetricRecord, RecordDict

    return Message(RecordDict({"metrics": MetricRecord({"x": int(msg.content["config"]["x"]), "node": context.node_id})}),
                   reply_to=msg)


def _pull_answer_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fab_files: dict[str, str]):
    """Flower's ``_pull_and_store_message`` stores a message as the SuperLink would deliver it; xincept answers it in
    process; Flower's ``_push_messages`` sends the reply. Returns the reply as the SuperLink would receive it and the
    node's state."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.supercore.fab import Fab
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supernode import start_client_internal as sci
    from flwr.supernode.nodestate import NodeStateFactory

    for name, value in (("_run_id", 7), ("_node_id", 0), ("_task_id", 1)):  # the server's side, while it builds the message
        monkeypatch.setattr(TaskIdentity, name, value)
    factory = NodeStateFactory(ObjectStoreFactory())
    state, store = factory.state(), factory.objectstore_factory.store()
    state.set_node_id(5)
    msg = Message(RecordDict({"config": ConfigRecord({"x": 3})}), dst_node_id=5, message_type="query.ping")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    objects = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    content = zip_bundle(fab_files)
    run = Run.create_empty(7)
    run.fab_hash = hashlib.sha256(content).hexdigest()
    delivered = iter([(msg, get_object_tree(msg))])
    run_id = sci._pull_and_store_message(state=state, object_store=store, node_config={"site": "a"},
                                         receive=lambda: next(delivered, None), get_run=lambda rid: run,
                                         get_fab=lambda h, rid: Fab(run.fab_hash, content, {}),
                                         pull_object=lambda rid, oid: objects[oid], confirm_message_received=lambda *a: None,
                                         trusted_entities=None)
    assert run_id == 7

    assert in_supernode.answer_pending(state, _echo) == 1
    assert in_supernode.answer_pending(state, _echo) == 0  # claimed once: nothing left to answer

    sent, pushed = [], {}

    def send(message, tree, runtime):
        sent.append((message, tree))
        return {t.object_id for t in _walk(tree)}, "session"

    sci._push_messages(state=state, object_store=store, send=send,
                       push_object=lambda rid, sid, oid, data: pushed.__setitem__(oid, data))
    (reply, tree), = sent
    body = inflate_object_from_contents(tree.object_id, pushed)
    return reply, body, msg, state


def _walk(tree):
    yield tree
    for child in tree.children:
        yield from _walk(child)


def test_a_pulled_message_is_answered_in_process_and_pushed_by_flowers_own_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reply, body, msg, state = _pull_answer_push(tmp_path, monkeypatch, our_bundle_files(tmp_path))
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert not body.has_error() and dict(body.content["metrics"]) == {"x": 3, "node": 5}  # the context is this node's
    from flwr.common.constant import Status, SubStatus

    assert [(t.status.status, t.status.sub_status) for t in state.get_tasks()] == [(Status.FINISHED, SubStatus.COMPLETED)]


def test_a_bundle_with_code_is_refused_in_process_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process answer reads the server's app bundle as data, as the separate runner does."""
    _, body, _, _ = _pull_answer_push(tmp_path, monkeypatch, {**our_bundle_files(tmp_path), "evil.py": "import os"})
    assert body.has_error() and "site refuses the run" in body.error.reason and "evil.py" in body.error.reason


def test_install_answers_before_flowers_reply_wait_and_only_once() -> None:
    calls = []
    module = types.SimpleNamespace(_push_messages=lambda **kw: calls.append(("push", kw["state"])))
    state = object()
    original = in_supernode.answer_pending
    in_supernode.answer_pending = lambda s, app: calls.append(("answer", s, app))  # type: ignore[assignment]
    try:
        assert in_supernode.install(module, app=lambda: "the app")
        assert not in_supernode.install(module, app=lambda: "another")  # already installed: left as it is
        module._push_messages(state=state, object_store=None, send=None, push_object=None)
    finally:
        in_supernode.answer_pending = original  # type: ignore[assignment]
    assert calls == [("answer", state, "the app"), ("push", state)]
    assert not in_supernode.install(types.SimpleNamespace())  # a Flower without this loop: nothing changed, runner used


def test_installed_flower_has_every_handler_the_in_process_answer_calls() -> None:
    """Fails when a Flower upgrade moves the Runtime API handlers (sites would then fall back to the slower runner)."""
    import inspect

    from flwr.supernode import start_client_internal as sci

    assert in_supernode.handlers_available()
    assert {"state", "object_store"} <= set(inspect.signature(sci._push_messages).parameters)
