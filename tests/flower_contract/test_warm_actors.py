"""The warm actor pool (server/flower_internals.py, ``warm_actors``) on Flower's real Ray backend:
a second simulation on the same cluster runs on the first one's actor processes, each actor gets
that simulation's environment and forgets the first one's caches first, and Flower's pool and
backend still have the attributes the pool is kept through."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from server import flower_internals
from simulations.local import simulate
from tests.conftest import small_experiment

pytestmark = pytest.mark.sim

SEEN_ENV = "CONFIDE_TEST_ACTOR_LOG"  # where the mod below writes what each actor saw


def record_actor(msg, context, call_next):  # noqa: ANN001, ANN201 - Flower mod signature
    """A ClientApp mod writing, before the site runs, the actor's pid, the sites it has cached and
    the test's marker variable: what a kept actor carries into the next simulation."""
    from common import site

    line = {"pid": os.getpid(), "cached_sites": len(site._CACHE), "marker": os.environ.get("CONFIDE_TEST_MARKER")}
    with open(os.environ[SEEN_ENV], "a") as fh:
        fh.write(json.dumps(line) + "\n")
    return call_next(msg, context)


def run_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, marker: str | None) -> list[dict]:
    log = tmp_path / f"{name}.jsonl"
    monkeypatch.setenv(SEEN_ENV, str(log))
    if marker is None:
        monkeypatch.delenv("CONFIDE_TEST_MARKER", raising=False)
    else:
        monkeypatch.setenv("CONFIDE_TEST_MARKER", marker)
    exp = small_experiment(
        **{"model.name": "resnet8", "strategy.rounds": 1, "data.max_samples": 64, "baseline.features": "off"}
    )
    simulate(exp, client_mods=[record_actor])
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_second_simulation_runs_on_the_first_ones_actors_with_its_own_environment_and_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the kept pool: the same pids in both simulations; in the second one's first messages no
    site is cached although the first one built both sites; the first one's marker variable set,
    the second one's removed (a new actor would not have it). Checked to fail without the reset
    (cached sites) and without the environment hand-over (stale marker)."""
    holder = flower_internals.warm()
    if holder is None:
        pytest.skip("simulations start their own actors in this session (CONFIDE_TEST_COLD_ACTORS=1)")
    first = run_once(tmp_path, monkeypatch, "first", "one")
    reused = holder.reused
    second = run_once(tmp_path, monkeypatch, "second", None)
    assert holder.reused == reused + 1, "the second simulation did not take the kept pool over"
    assert {x["pid"] for x in second} <= {x["pid"] for x in first}, (first, second)
    assert {x["marker"] for x in first} == {"one"} and {x["marker"] for x in second} == {None}, (first, second)
    assert max(x["cached_sites"] for x in first) >= 1, "the first run cached no site: the check below proves nothing"
    # the first message each actor handled in the second simulation: nothing left from the first
    firsts = {x["pid"]: x for x in reversed(second)}
    assert all(x["cached_sites"] == 0 for x in firsts.values()), second


def test_flowers_backend_and_pool_have_what_the_warm_pool_uses() -> None:
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    for name in ("build", "terminate", "process_message"):
        assert callable(getattr(RayBackend, name, None)), f"Flower's RayBackend has no {name}()"
    names = BasicActorPool.__init__.__code__.co_names  # the attributes its constructor sets
    for attr in ("pool", "num_actors", "_future_to_actor"):
        assert attr in names, f"Flower's BasicActorPool no longer keeps '{attr}', which the warm pool reads"
    assert callable(getattr(BasicActorPool, "terminate_all_actors", None)), "no BasicActorPool.terminate_all_actors()"
