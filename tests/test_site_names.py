"""The coordinator names a site by its site-name even when the site's first reply is an error."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata

from common import config as config_mod
from server.recorder import RoundRecorder
from server.strategy import build_strategy
from tests.test_deploy import FakeGrid, push, serverapp_identity  # noqa: F401  (fixture)

pytestmark = pytest.mark.unit


def site_error(msg: Message, node: int, reason: str) -> Message:
    """An error reply from the site's own SuperNode (its node id as source), as Flower wraps a
    ClientApp's exception."""
    meta = Metadata(
        run_id=msg.metadata.run_id, message_id="", src_node_id=node, dst_node_id=msg.metadata.src_node_id,
        reply_to_message_id=msg.metadata.message_id, group_id=msg.metadata.group_id, created_at=0.0, ttl=60,
        message_type=msg.metadata.message_type,
    )  # fmt: skip
    return make_message(meta, error=Error(code=0, reason=reason))


@pytest.mark.usefixtures("serverapp_identity")
def test_a_site_refusing_round_1_is_recorded_by_its_site_name() -> None:
    """Proves a site that refuses the job before it ever replied (the site policy's refusal, and
    a data error in the public form) is recorded and logged as 'site-a'/'site-b', the names in
    their errors, not node-<id>; an error without a name keeps node-<id>."""
    recorder = RoundRecorder(None)
    exp = config_mod.load(None, {"strategy.min_sites": 1, "data.num_sites": 3})
    strategy = build_strategy(exp, {"w": np.zeros((2, 2), np.float32)}, recorder)
    arrays = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32))})
    sent = {m.metadata.dst_node_id: m for m in push(strategy.configure_train(1, arrays, ConfigRecord(),
                                                                              FakeGrid([31, 32, 33])))}  # fmt: skip
    refusal = (
        "<class 'client.public_errors.SiteFailure'>:<'[policy-refused] site 'site-a': site policy refuses the job: "
        "rule 'allowed-modes' (built-in strict default): the job asks privacy.mode='off'; allowed: local'>"
    )
    data_error = "site 'site-b' [data-error]: a check of the site's data failed; the full reason is in its own log"
    replies = [site_error(sent[31], 31, refusal), site_error(sent[32], 32, data_error),
               site_error(sent[33], 33, "Exception occurred")]  # fmt: skip
    with pytest.raises(Exception, match="valid update"):
        strategy.aggregate_train(1, replies)
    assert [f["site"] for f in recorder._cur().failures] == ["site-a", "site-b", "node-33"]
