"""Shared fixtures: an isolated project root per test and the optional real datasets; the test
tiers (unit, sim, system) and the guard that keeps the unit tier free of processes, Ray and the
network."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import config as config_mod
from tests import ray_head, tiers

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Relative paths in configs (runs/, data files) resolve inside the test's tmp folder."""
    monkeypatch.setenv("CONFIDE_ROOT", str(tmp_path))
    # Privacy ledgers of simulated parties live in the state folder (they outlive run folders):
    # each test gets its own, never the developer's.
    monkeypatch.setenv("CONFIDE_STATE_DIR", str(tmp_path / "confide-state"))
    return tmp_path


@pytest.fixture(autouse=True)
def simulation_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that runs a deployed site's ClientApp in this process locks study seeds out of it
    for good (common/privacy/mechanism/randomness.py), as a real site's process is; each test starts as a
    simulation process again."""
    from common.privacy.mechanism import randomness

    monkeypatch.setattr(randomness, "_FORBIDDEN", False)


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"real dataset not available: {path}")
    return path


def small_experiment(**overrides: object) -> config_mod.ExperimentConfig:
    """A fast digits/ResNet-18 experiment; overrides use dotted keys."""
    base = {
        "data.num_sites": 2,
        "strategy.min_sites": 2,
        "strategy.rounds": 2,
        "data.max_samples": 400,
        "train.batch_size": 32,
    }
    base.update({k: v for k, v in overrides.items()})
    return config_mod.load(None, base)


@pytest.fixture(autouse=True)
def no_open_run_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run folders this process is writing (common/rundir.py, which a stop signal marks): each
    test starts with none, whatever earlier tests left open."""
    from common import rundir

    monkeypatch.setattr(rundir, "_OPEN", set())


@pytest.fixture(autouse=True)
def unit_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test in the unit tier that starts a process, Ray or a network connection fails at that
    call, naming it, and one that runs too long fails: the quick tier stays quick, and a
    mislabelled test is caught, not tolerated."""
    if tiers.tier_of(request.node) != tiers.UNIT:
        yield
        return
    limit = tiers.unit_limit_s()
    tiers.forbid_heavy_calls(monkeypatch, request.node.nodeid)
    started = time.process_time()  # CPU time: a loaded machine stretches wall time, not the work done
    yield
    tiers.check_duration(request.node.nodeid, time.process_time() - started, limit)


PRIVATE_RAY_ENV = "CONFIDE_TEST_PRIVATE_RAY"  # =1: each simulation starts its own Ray, as outside tests
COLD_ACTORS_ENV = "CONFIDE_TEST_COLD_ACTORS"  # =1: each simulation starts its own actors, as outside tests


@pytest.fixture(scope="session")
def shared_ray_head() -> Iterator[ray_head.RayHead]:
    """Started by the first sim-tier test that runs, stopped at the end of the session."""
    head = ray_head.start_head()
    try:
        yield head
    finally:
        ray_head.stop_head(head)


@pytest.fixture(scope="session")
def warm_simulation_actors(shared_ray_head: ray_head.RayHead) -> Iterator[None]:
    """The session's simulations keep their Ray actors between runs (server/flower_internals.py):
    each simulation otherwise spends seconds starting workers that import torch and the ClientApp."""
    from server import flower_internals
    from tests.warm_actors import forget_process_state

    with flower_internals.warm_actors(reset=forget_process_state):
        yield


@pytest.fixture(autouse=True)
def sim_tier_ray(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sim-tier test's simulations attach to the session's Ray head rather than starting a
    private Ray each (10-25 s apiece). A test that unsets RAY_ADDRESS, or names another cluster,
    still gets what it asks for."""
    if tiers.tier_of(request.node) == tiers.SIM:
        attach_to_shared_ray(request, monkeypatch)


def attach_to_shared_ray(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's simulations from here on (until ``monkeypatch`` is undone) run on the
    session's Ray head, with its kept actors. Their workers get what a private Ray's workers would
    inherit from this process: the CONFIDE_* variables set at the time. Processes this test starts
    are not affected unless it passes them RAY_ADDRESS."""
    if os.environ.get(PRIVATE_RAY_ENV) or os.environ.get("RAY_ADDRESS"):
        return
    head = request.getfixturevalue("shared_ray_head")
    if not os.environ.get(COLD_ACTORS_ENV):
        request.getfixturevalue("warm_simulation_actors")
    monkeypatch.setenv("RAY_ADDRESS", head.address)
    from simulations import ray_cluster

    worker_env = ray_cluster._worker_env

    def with_confide_env() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k.startswith("CONFIDE_")} | worker_env()

    monkeypatch.setattr(ray_cluster, "_worker_env", with_confide_env)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tiers.check_markers(items)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tiers.record(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    tiers.summarize(terminalreporter)
