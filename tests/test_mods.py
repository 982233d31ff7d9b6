"""client/mods.py: with client-side central DP the site clips its own update to the server's
clipping norm (via Flower's fixedclipping_mod); without the request, messages pass untouched.
Real Flower Message objects."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client.mods import central_dp_clipping_mod
from common.privacy.governance.central import CLIENT_CLIPPING_KEY

pytestmark = pytest.mark.unit

GLOBAL = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}


def train_message(config: dict) -> Message:
    meta = Metadata(
        run_id=1, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=7, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=60, message_type="train",
    )  # fmt: skip
    content = RecordDict(
        {"arrays": ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), "config": ConfigRecord(config)}
    )
    return make_message(meta, content=content)


def local_training(msg: Message, context: Context) -> Message:
    """A site whose update moves every weight by 5 (update norm = 5 * sqrt(16)= 20)."""
    arrays = ArrayRecord({k: Array(v.numpy() + 5.0) for k, v in msg.content["arrays"].items()})
    return Message(content=RecordDict({"arrays": arrays}), reply_to=msg)


def update_norm(reply: Message) -> float:
    arrays = reply.content["arrays"]
    return float(np.sqrt(sum(((arrays[k].numpy() - GLOBAL[k]) ** 2).sum() for k in GLOBAL)))


def context() -> Context:
    from flwr.app import RecordDict as RD

    return Context(run_id=1, node_id=7, node_config={}, state=RD(), run_config={})


def test_update_is_clipped_when_the_server_asks_for_client_side_clipping() -> None:
    msg = train_message({CLIENT_CLIPPING_KEY: "fixed", KEY_CLIPPING_NORM: 2.0, "server-round": 1})
    reply = central_dp_clipping_mod(msg, context(), local_training)
    assert abs(update_norm(reply) - 2.0) < 1e-4


def test_messages_without_the_request_pass_untouched() -> None:
    msg = train_message({KEY_CLIPPING_NORM: 2.0, "server-round": 1})
    reply = central_dp_clipping_mod(msg, context(), local_training)
    assert abs(update_norm(reply) - 5.0 * np.sqrt(16)) < 1e-4
