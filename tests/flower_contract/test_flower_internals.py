"""What Confide relies on in Flower beyond its documented API (server/flower_internals.py), pinned
against the installed Flower. A Flower upgrade that changes any of it fails here first, each
assertion saying what Confide needs: FedAvgM's momentum list and FedAdam's moment dicts (saved in
checkpoints and restored on resume), the signal handler Confide reads the signal from, the
in-process simulation entry point and its arguments, the SecAgg+ workflow names server/secagg.py
uses, the actor-pool sizing function simulations/ray_cluster.py caps, and how often Flower's
grids look for replies (server/prompt_grid.py). Expected values are
computed by hand from the updates."""

from __future__ import annotations

import inspect
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata
from flwr.serverapp.strategy import FedAdam, FedAvgM

from server import flower_internals

pytestmark = pytest.mark.unit


def reply(node: int, w: list[float], examples: float = 1.0):
    meta = Metadata(
        run_id=1, message_id=uuid.uuid4().hex, src_node_id=node, dst_node_id=0, reply_to_message_id="x",
        group_id="1", created_at=time.time(), ttl=60, message_type="train",
    )  # fmt: skip
    content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": examples}),
            "arrays": ArrayRecord({"a": Array(np.asarray(w[:1])), "b": Array(np.asarray(w[1:]))}),
            "config": ConfigRecord({}),
        }
    )
    return make_message(meta, content=content)


def start(strategy, x: list[float]):
    strategy.current_arrays = ArrayRecord({"a": Array(np.asarray(x[:1])), "b": Array(np.asarray(x[1:]))})
    return strategy


def step(strategy, rnd: int, updates: list[list[float]]) -> np.ndarray:
    arrays, _ = strategy.aggregate_train(rnd, [reply(i + 1, u) for i, u in enumerate(updates)])
    strategy.current_arrays = arrays
    return np.concatenate([arrays["a"].numpy(), arrays["b"].numpy()])


def test_fedavgm_keeps_its_momentum_as_a_list_in_tensor_order() -> None:
    """x0 = (1, 2); mean of the replies (0, 0) and (0, 2) = (0, 1): pseudo-gradient (1, 1), momentum
    (1, 1), x1 = x0 - 0.5 (1, 1) = (0.5, 1.5). Round 2, replies both (0.5, 1.5): pseudo-gradient 0,
    momentum 0.9 (1, 1), x2 = (0.5, 1.5) - 0.5 * 0.9 = (0.05, 1.05)."""
    s = start(FedAvgM(server_learning_rate=0.5, server_momentum=0.9), [1.0, 2.0])
    assert np.allclose(step(s, 1, [[0.0, 0.0], [0.0, 2.0]]), [0.5, 1.5])
    state = flower_internals.optimizer_state(s, ["a", "b"])
    assert set(state) == {"momentum/a", "momentum/b"}, "FedAvgM's momentum_vector is no longer a list of arrays"
    assert np.allclose(state["momentum/a"], [1.0]) and np.allclose(state["momentum/b"], [1.0])
    assert np.allclose(step(s, 2, [[0.5, 1.5], [0.5, 1.5]]), [0.05, 1.05])


def test_a_restored_fedavgm_continues_where_the_saved_one_was() -> None:
    """The checkpoint path: save after round 1, load into a fresh strategy, same round 2."""
    first = start(FedAvgM(server_learning_rate=0.5, server_momentum=0.9), [1.0, 2.0])
    x1 = step(first, 1, [[0.0, 0.0], [0.0, 2.0]])
    saved = flower_internals.optimizer_state(first, ["a", "b"])
    fresh = start(FedAvgM(server_learning_rate=0.5, server_momentum=0.9), list(x1))
    assert flower_internals.keeps_state(fresh, "momentum") and not flower_internals.keeps_state(fresh, "m_t")
    groups = {"momentum": {k.split("/")[1]: v for k, v in saved.items()}}
    flower_internals.load_optimizer_state(fresh, ["a", "b"], groups)
    assert np.allclose(step(fresh, 2, [[0.5, 1.5], [0.5, 1.5]]), step(first, 2, [[0.5, 1.5], [0.5, 1.5]]))


def test_fedadam_keeps_its_moments_as_dicts_by_tensor_name() -> None:
    """One round from x0 = (0, 0) to the mean (1, -1): delta (1, -1); both moments start at 0, so
    m_1 = (1 - 0.9) delta = (0.1, -0.1) and v_1 = (1 - 0.99) delta^2 = (0.01, 0.01)."""
    s = FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-9)
    s.current_arrays = {"a": np.zeros(1), "b": np.zeros(1)}  # FedOpt keeps the model as arrays by name
    step(s, 1, [[1.0, -1.0]])
    state = flower_internals.optimizer_state(s, ["a", "b"])
    assert set(state) == {"m_t/a", "m_t/b", "v_t/a", "v_t/b"}, "FedAdam's m_t / v_t are no longer dicts by name"
    assert np.allclose(state["m_t/a"], [0.1]) and np.allclose(state["m_t/b"], [-0.1])
    assert np.allclose(state["v_t/a"], [0.01]) and np.allclose(state["v_t/b"], [0.01])


def test_the_signal_handler_confide_reads_has_a_signalnum_argument() -> None:
    from flwr.supercore.exit import signal_handler

    source = inspect.getsource(signal_handler)
    assert "def graceful_exit_handler(signalnum" in source, (
        "Flower renamed its signal handler or its argument: server/flower_internals.exiting_signal "
        "would no longer find which signal stopped a run (FAILED.txt would not say)"
    )


def test_the_in_process_simulation_takes_the_arguments_confide_passes() -> None:
    from flwr.simulation import run_simulation

    params = inspect.signature(run_simulation).parameters
    assert {"server_app", "client_app", "num_supernodes", "backend_config"} <= set(params), (
        "flwr.simulation.run_simulation changed its arguments (simulations/local.py passes these)"
    )


def test_the_simulation_grid_looks_for_replies_often_and_the_remote_one_every_3_s() -> None:
    """server/app.py wraps only a grid without ``pull_interval`` (Flower's remote grid, which
    sleeps 3 s between looks) in PromptGrid; the in-memory grid already looks every 0.1 s. If
    Flower's remote grid looks often itself, PromptGrid is no longer needed."""
    from flwr.superlink.grid.http_grid import HttpGrid
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    assert inspect.signature(InMemoryGrid.__init__).parameters["pull_interval"].default == 0.1, (
        "Flower's in-memory grid no longer looks for replies every 0.1 s by default"
    )
    assert "pull_interval" not in inspect.signature(HttpGrid.__init__).parameters
    assert "time.sleep(3)" in inspect.getsource(HttpGrid.send_and_receive), (
        "Flower's remote grid no longer waits 3 s between looks for replies: server/prompt_grid.py may go"
    )
    no_state = SimpleNamespace(state=lambda: None)
    assert not flower_internals.polls_slowly(InMemoryGrid(no_state))  # type: ignore[arg-type]
    assert flower_internals.polls_slowly(HttpGrid(token="t"))


def test_the_secagg_workflow_names_confide_uses_exist() -> None:
    """server/secagg.py drives Flower's SecAgg+ workflow through its legacy strategy interface."""
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey

    assert MAIN_CONFIGS_RECORD and MAIN_PARAMS_RECORD and hasattr(WorkflowKey, "CURRENT_ROUND")
    assert hasattr(SecAggPlusWorkflow, "_check_threshold"), "SecAggPlusWorkflow no longer has _check_threshold"


def test_the_ray_backends_actor_pool_is_sized_by_the_function_confide_replaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """simulations/ray_cluster.attached caps a simulation's actors on a shared cluster by replacing
    ``ray_actor.pool_size_from_resources``: the pool Flower's RayBackend builds must size itself by
    looking that name up in its module when it is built (building it starts no actor and no Ray)."""
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.simulation.ray_transport import ray_actor
    from ray.exceptions import RaySystemError

    assert raybackend.BasicActorPool is ray_actor.BasicActorPool, "RayBackend no longer uses ray_actor's pool"
    assert "client_resources" in inspect.signature(ray_actor.pool_size_from_resources).parameters
    monkeypatch.setattr(ray_actor, "pool_size_from_resources", lambda client_resources: 2)
    try:
        capacity = ray_actor.BasicActorPool(ray_actor.ClientAppActor, {"num_cpus": 1}, {}).actors_capacity
    except RaySystemError:  # Flower's own sizing ran: it asks Ray, not started here, for the nodes
        capacity = None
    assert capacity == 2, (
        "Flower's actor pool no longer sizes itself through ray_actor.pool_size_from_resources: "
        "simulations/ray_cluster.attached would no longer cap the actors on a shared cluster"
    )
