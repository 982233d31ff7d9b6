"""Confide's strategy holds Flower's and hands it the aggregation: on the same fixed replies, round
after round, the composed strategy's model equals the bare Flower strategy's (FedAvg; FedAvgM and
FedAdam, whose server step needs the model configure_train handed over and keeps state between
rounds); a malformed (non-finite) update that the bare strategy takes into its aggregate is
excluded by the composed one, which names the site and aggregates the others as Flower would."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from common import config as config_mod
from common.errors import ConfideError
from server.recorder import RoundRecorder
from server.strategy import ConfideStrategy, build_strategy, flower_strategy
from tests.test_strategy import reply

pytestmark = pytest.mark.unit

REF = {"w": np.zeros(4, np.float32)}
WEIGHTS = [1.0, 2.0, 5.0]
ROUNDS = {  # round -> each site's returned model
    1: [[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 2.0, 0.5], [2.0, 0.0, -1.0, 1.0]],
    2: [[0.5, 0.5, 0.5, 0.5], [1.5, -0.5, 0.0, 2.0], [-1.0, 1.0, 1.0, 0.0]],
}


@pytest.fixture(autouse=True)
def server_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower builds a ServerApp's messages for the run its process belongs to."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class FixedGrid:
    """The three nodes the strategies sample from (all of them: fraction_train is 1)."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


# FedAvgM's defaults (server_lr 1, no momentum yet) make its first step the plain mean.
SERVER_STEP = {"fedavgm": {"strategy.server_lr": 0.5, "strategy.server_momentum": 0.9}}


def experiment(name: str, sites: int = 3):
    keys = {"strategy.name": name, "data.num_sites": sites, "strategy.min_sites": 3}
    return config_mod.load(None, keys | SERVER_STEP.get(name, {}))


def replies(values: list[list[float]], weights: list[float]) -> list:
    """Fresh messages for each strategy: aggregation may rewrite a reply's records in place."""
    metrics = [{"weight": w, "train_seconds": 1.0} for w in weights]
    return [reply(i + 1, f"s{i}", {"w": np.array(v, np.float32)}, m) for i, (v, m) in enumerate(zip(values, metrics))]


def one_round(strategy, rnd: int, model: np.ndarray, values: list[list[float]], weights: list[float]) -> np.ndarray:
    arrays = ArrayRecord({"w": Array(model.astype(np.float32))})
    messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({}), FixedGrid()))
    assert len(messages) == 3
    aggregated, _ = strategy.aggregate_train(rnd, replies(values, weights))
    return aggregated["w"].numpy()


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadam"])
def test_the_composed_strategy_aggregates_as_the_bare_flower_strategy(name: str) -> None:
    exp = experiment(name)
    recorder = RoundRecorder(None)
    composed = build_strategy(exp, REF, recorder)
    bare = flower_strategy(exp)
    assert isinstance(composed, ConfideStrategy) and type(bare) is type(composed.flower)
    ours = theirs = np.zeros(4, np.float32)
    for rnd, values in ROUNDS.items():
        mean = np.average(np.array(values), axis=0, weights=WEIGHTS)
        ours = one_round(composed, rnd, ours, values, WEIGHTS)
        theirs = one_round(bare, rnd, theirs, values, WEIGHTS)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
        assert ours.dtype == np.float32
        assert recorder.current.failures == [] and sorted(recorder.current.train) == ["s0", "s1", "s2"]
        if name == "fedavg":
            np.testing.assert_allclose(ours, mean, rtol=1e-6)
        else:  # a server step, not the mean: the comparison above covers Flower's own optimizer
            assert not np.allclose(ours, mean)
    if name != "fedavg":
        assert composed.server_state()  # the optimizer state lives in the held Flower strategy


def test_a_malformed_update_is_excluded_where_the_bare_strategy_takes_it() -> None:
    exp = experiment("fedavg", sites=4)
    recorder = RoundRecorder(None)
    composed = build_strategy(exp, REF, recorder)
    bare = flower_strategy(exp)
    good = ROUNDS[1]
    values, weights = [*good, [np.nan, 0.0, 0.0, 0.0]], [*WEIGHTS, 1.0]

    taken, _ = bare.aggregate_train(1, replies(values, weights))
    assert np.isnan(taken["w"].numpy()).any()  # Flower alone averages the non-finite update in

    ours = one_round(composed, 1, np.zeros(4, np.float32), values, weights)
    (failure,) = recorder.current.failures
    assert failure["site"] == "s3" and "'w'" in failure["reason"]
    assert np.isfinite(ours).all()
    without, _ = flower_strategy(exp).aggregate_train(1, replies(good, WEIGHTS))
    np.testing.assert_allclose(ours, without["w"].numpy(), rtol=1e-6)


def test_a_flower_strategy_weighing_by_another_key_is_refused() -> None:
    """Confide checks and releases each reply's weight under 'weight': a held strategy that weighs by
    anything else would aggregate by a number nobody checked."""
    from flwr.serverapp.strategy import FedAvg

    exp = experiment("fedavg")
    with pytest.raises(ConfideError, match="weighs replies by 'num-examples'"):
        ConfideStrategy(FedAvg(), exp.strategy, REF, RoundRecorder(None))
