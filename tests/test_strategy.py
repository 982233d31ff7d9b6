"""Confide's checks around FedAvg (build_strategy): malformed updates are excluded by name, failures
recorded, min_sites enforced, per-site metrics kept beside the weighted mean. Uses real Flower Message objects."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata

from common import config as config_mod
from common.errors import ConfideError
from server.recorder import RoundRecorder
from server.strategy import build_strategy

pytestmark = pytest.mark.unit

REF = {"w": np.zeros((2, 2), np.float32), "n": np.zeros((), np.int64)}


def reply(node: int, site: str, weights: dict | None = None, metrics: dict | None = None, error: str = ""):
    meta = Metadata(
        run_id=1,
        message_id=uuid.uuid4().hex,
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="x",
        group_id="1",
        created_at=time.time(),
        ttl=60,
        message_type="train",
    )
    if error:
        return make_message(meta, error=Error(code=0, reason=f"Traceback ...\nDataError: {error}"))
    content = RecordDict(
        {
            "metrics": MetricRecord(metrics or {"weight": 10, "num-examples": 10, "train_seconds": 1.0}),
            "site": ConfigRecord({"name": site}),
        }
    )
    if weights is not None:
        content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()})
    return make_message(meta, content=content)


def strategy(min_sites: int = 1):
    recorder = RoundRecorder(None)
    exp = config_mod.load(None, {"strategy.min_sites": min_sites, "data.num_sites": 3})
    s = build_strategy(exp, REF, recorder)
    recorder.begin(1, bytes_down=0)
    return s, recorder


def good(v: float) -> dict:
    return {"w": np.full((2, 2), v, np.float32), "n": np.array(3, np.int64)}


def test_weighted_average_of_valid_updates() -> None:
    s, _ = strategy()
    arrays, _ = s.aggregate_train(
        1,
        [
            reply(1, "a", good(1.0), {"weight": 30, "num-examples": 30, "train_seconds": 1.0}),
            reply(2, "b", good(5.0), {"weight": 10, "num-examples": 10, "train_seconds": 2.0}),
        ],
    )
    assert np.allclose(arrays["w"].numpy(), 2.0)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"w": np.full((2, 2), np.nan, np.float32), "n": np.array(1)}, "'w' has non-finite values"),
        ({"w": np.zeros((3, 3), np.float32), "n": np.array(1)}, r"'w' has shape \(3, 3\)"),
        ({"w": np.zeros((2, 2), np.float32)}, "lacks tensor 'n'"),
    ],
)
def test_malformed_update_is_excluded_and_named(bad: dict, message: str) -> None:
    s, rec = strategy(min_sites=1)
    arrays, _ = s.aggregate_train(1, [reply(1, "good", good(1.0)), reply(2, "evil", bad)])
    assert np.allclose(arrays["w"].numpy(), 1.0)  # only the good site counted
    (failure,) = rec.current.failures
    assert failure["site"] == "evil" and failure["phase"] == "train"
    assert "site 'evil'" in failure["reason"] and pytest.importorskip("re").search(message, failure["reason"])


def test_too_few_valid_updates_stop_the_run_with_reasons() -> None:
    s, _ = strategy(min_sites=2)
    with pytest.raises(
        ConfideError, match=r"round 1: 1 valid update\(s\).*min_sites=2.*node-2: DataError: label 'x' unknown"
    ):
        s.aggregate_train(1, [reply(1, "a", good(1.0)), reply(2, "b", error="label 'x' unknown")])


def test_site_errors_and_per_site_evaluation_are_recorded() -> None:
    s, rec = strategy()
    s.aggregate_train(1, [reply(1, "a", good(1.0)), reply(2, "b", good(1.0))])
    agg = s.aggregate_evaluate(
        1,
        [
            reply(1, "a", metrics={"weight": 10, "num-examples": 10, "accuracy": 0.9, "loss": 0.1}),
            reply(2, "b", metrics={"weight": 30, "num-examples": 30, "accuracy": 0.5, "loss": 0.7}),
            reply(3, "c", error="disk full"),
        ],
    )
    assert agg["accuracy"] == pytest.approx(0.6) and agg["worst_accuracy"] == 0.5
    line = rec.close({"accuracy": 0.7})
    assert line["sites"]["a"]["evaluate"]["accuracy"] == 0.9
    assert line["federated"]["worst_accuracy"] == 0.5
    assert line["failures"] == [{"site": "node-3", "phase": "evaluate", "reason": "DataError: disk full"}]
    assert line["sites"]["a"]["train"]["bytes_up"] == 16 + 8
