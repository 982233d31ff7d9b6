"""client/update.py: the pair every ClientApp mod after training acts on, read from and written
back to Flower's messages in one place."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata

from client.update import Update, received, replace, update_of
from common.errors import ConfigError

pytestmark = pytest.mark.unit


def training(records: dict[str, dict[str, np.ndarray]]) -> Message:
    meta = Metadata(
        run_id=1, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=7, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=60, message_type="train",
    )  # fmt: skip
    content = RecordDict({k: ArrayRecord({n: Array(v) for n, v in w.items()}) for k, w in records.items()})
    content["config"] = ConfigRecord({"server-round": 1})
    return make_message(meta, content=content)


def answer(msg: Message, weights: dict[str, np.ndarray], key: str = "arrays") -> Message:
    record = ArrayRecord({n: Array(v) for n, v in weights.items()})
    return Message(content=RecordDict({key: record, "metrics": MetricRecord({"loss": 0.5})}), reply_to=msg)


def test_the_update_pairs_the_model_received_before_the_app_ran_with_the_reply() -> None:
    """What the site received is read before an inner step rewrites the message; the reply's
    weights and the record holding them come from the reply."""
    msg = training({"arrays": {"w": np.zeros(3, np.float32)}})
    start = received(msg)
    msg.content["arrays"] = ArrayRecord({"w": Array(np.full(3, 9.0, np.float32))})  # an inner mod's rewrite
    update = update_of(start, answer(msg, {"w": np.ones(3, np.float32)}, key="weights"))
    assert update is not None and update.key == "weights"
    assert np.array_equal(update.received["w"], np.zeros(3)) and np.array_equal(update.returned["w"], np.ones(3))


def test_there_is_no_update_in_an_error_or_in_a_reply_with_two_weight_records() -> None:
    msg = training({"arrays": {"w": np.zeros(2, np.float32)}})
    assert update_of(received(msg), Message(Error(code=1, reason="refused"), reply_to=msg)) is None
    two = answer(msg, {"w": np.ones(2, np.float32)})
    two.content["other"] = ArrayRecord({"v": Array(np.ones(1, np.float32))})
    assert update_of(received(msg), two) is None


def test_a_training_message_without_exactly_one_model_is_refused_naming_the_count() -> None:
    msg = training({"a": {"w": np.zeros(1, np.float32)}, "b": {"w": np.zeros(1, np.float32)}})
    with pytest.raises(ConfigError, match="carries 2 weight records"):
        received(msg)


def test_replace_writes_the_new_weights_under_the_replys_own_record() -> None:
    msg = training({"arrays": {"w": np.zeros(2, np.float32)}})
    reply = answer(msg, {"w": np.ones(2, np.float32)}, key="weights")
    update = update_of(received(msg), reply)
    assert isinstance(update, Update)
    replace(reply, update, {"w": np.full(2, 4.0, np.float32)})
    assert list(reply.content.array_records) == ["weights"]
    assert np.array_equal(reply.content["weights"]["w"].numpy(), np.full(2, 4.0))
