"""A head travels as one packed array and its layout: exact round trip, refusals, few Flower objects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xincept.common.fedconfig import FedSettings
from xincept.common.packing import PackingError, layout_of, pack, parse_layout, unpack


def _state() -> dict[str, torch.Tensor]:
    from xincept.common.head import new_head_for

    return new_head_for([32, 24], 4, FedSettings(pretrained=False).run_config().head).trainable_state()


def test_pack_unpack_round_trip_is_exact_and_keeps_names_order_and_shapes() -> None:
    state = _state()
    vec, layout = pack(state), layout_of(state)
    assert vec.dtype == np.float32 and vec.ndim == 1 and vec.size == sum(v.numel() for v in state.values())
    back = unpack(vec, layout)
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v)
    # packing in another order (the order the server sent) gives that order back
    order = list(reversed(state))
    assert list(unpack(pack(state, order), layout_of({k: state[k] for k in order}))) == order


def test_a_vector_or_layout_that_does_not_add_up_is_refused() -> None:
    state = _state()
    vec, layout = pack(state), layout_of(state)
    with pytest.raises(PackingError, match="needs"):
        unpack(vec[:-1], layout)
    with pytest.raises(PackingError, match="1-D float32"):
        unpack(vec.astype(np.float64), layout)
    with pytest.raises(PackingError, match="new name"):
        parse_layout(["a:2", "a:3"])
    with pytest.raises(PackingError, match="name:d0"):
        parse_layout(["a:2,x"])
    with pytest.raises(PackingError, match="missing"):
        pack(state, order=list(state)[1:])
    with pytest.raises(PackingError, match="floating-point"):
        pack({"steps": torch.zeros(3, dtype=torch.int64)})
    assert parse_layout(["scalar:"]) == [("scalar", ())]


def test_a_head_message_is_a_handful_of_flower_objects_and_reads_back() -> None:
    from flwr.app import ConfigRecord, Message
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.task_identity import TaskIdentity

    from xincept.head_message import head_content, state_from

    state = _state()
    content = head_content(state, config=ConfigRecord({"server-round": 1}))
    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    try:
        msg = Message(content, dst_node_id=1, message_type="train.head")
        objects = get_all_nested_objects(msg)
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    assert len(state) >= 12 and len(objects) <= 8  # one array (and its chunk), not two objects per tensor
    back = state_from(msg.content)
    assert all(torch.equal(back[k], v) for k, v in state.items())
