"""The one place Confide touches what Flower does not promise: private strategy state, the stack
of Flower's signal handler, the in-process simulation entry point Flower 1.42 deprecates, its
Ray backend's actor pool (kept warm between simulations of one process), and how often its grids
look for replies.

Everything here is pinned by tests/flower_contract/, so a Flower upgrade that moves any of it
fails there first, with a message naming what changed. Nothing outside this module reads or
writes these names.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

# Where Flower 1.42's Message-API server optimizers keep their state: FedAvgM a list of momentum
# arrays in the model's tensor order; FedAdam/FedYogi/FedAdagrad dicts of first and second moments
# keyed by tensor name. Confide's checkpoint groups: "momentum", "m_t", "v_t".
MOMENTUM = "momentum_vector"
MOMENTS = ("m_t", "v_t")
STATE_GROUPS = ("momentum", *MOMENTS)

# Flower's warning when the in-process simulation entry point is used (it says to use `flwr run`;
# Confide's tests, sweeps and benchmarks need the in-process engine).
SIMULATION_DEPRECATION = "DEPRECATED FEATURE: The `run_simulation` function"


def optimizer_state(strategy: Any, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The server optimizer's state by "<group>/<tensor name>" (empty for stateless strategies)."""
    out: dict[str, np.ndarray] = {}
    momentum = getattr(strategy, MOMENTUM, None)
    if momentum is not None:
        out |= {f"momentum/{k}": np.asarray(v) for k, v in zip(list(names), momentum, strict=True)}
    for moment in MOMENTS:
        out |= {f"{moment}/{k}": np.asarray(v) for k, v in (getattr(strategy, moment, None) or {}).items()}
    return out


def keeps_state(strategy: Any, group: str) -> bool:
    """Whether the strategy keeps ``group`` state (so a checkpoint's group may be restored into it)."""
    return group in STATE_GROUPS and hasattr(strategy, MOMENTUM if group == "momentum" else group)


def load_optimizer_state(strategy: Any, names: Iterable[str], groups: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Restore what ``optimizer_state`` saved (the caller has checked every group's tensors)."""
    if "momentum" in groups:
        setattr(strategy, MOMENTUM, [np.asarray(groups["momentum"][k]) for k in names])
    for moment in MOMENTS:
        if moment in groups:
            setattr(strategy, moment, {k: np.asarray(v) for k, v in groups[moment].items()})


def exiting_signal() -> int | None:
    """The signal Flower's handler is exiting on: its ``signalnum`` argument, found up the stack
    (Flower passes only an exit code to exit handlers)."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "graceful_exit_handler" and "signalnum" in frame.f_locals:
            return int(frame.f_locals["signalnum"])
        frame = frame.f_back
    return None


# Flower's in-memory (simulation) grid looks for replies every ``pull_interval`` seconds (0.1);
# its grid to a remote SuperLink has no such attribute and looks every 3 s.
PULL_INTERVAL = "pull_interval"


def polls_slowly(grid: Any) -> bool:
    """Whether ``grid`` waits seconds between looks for replies (so server/prompt_grid.py helps)."""
    return getattr(grid, PULL_INTERVAL, None) is None


def run_in_process(**kwargs: Any) -> None:
    """Flower's in-process simulation (Ray backend) with ``kwargs`` as its keyword arguments."""
    from flwr.simulation import run_simulation

    run_simulation(**kwargs)


class WarmActors:
    """Flower's Ray connection and actor pool, kept by this process between simulations.

    Flower's Ray backend creates its actors when a simulation starts and kills them, with the
    driver's Ray connection, when it ends; every simulation then pays for new worker processes
    importing torch, Opacus and the ClientApp (seconds each) before its first message. Here the
    connection and the pool outlive the simulation: the next one on the same cluster with the same
    per-actor resources and pool size takes the pool over. Before each simulation every actor gets
    that simulation's worker environment (``env``: what a new actor would inherit) and runs
    ``reset`` (so no per-process cache of one simulation reaches the next); a pool that still has
    work in flight, or an actor that does not answer, is ended rather than reused.
    """

    def __init__(self, reset: Callable[[], None]) -> None:
        self.reset = reset
        self.connection: str | None = None  # the cluster address the driver is attached to
        self.env: dict[str, str] = {}  # the worker environment of the simulation about to run
        self.pool: Any = None
        self.pool_key: tuple | None = None
        self.pids: set[int] = set()  # the actors' processes, which the simulation's reaper must spare
        self.reused = 0  # simulations that took a kept pool over

    def prepare(self, pool: Any) -> bool:
        """Give every actor of ``pool`` this simulation's environment and reset it; False if one fails."""
        import ray

        try:
            calls = [a.__ray_call__.remote(_prepare_actor, self.env, self.reset) for a in pool.pool]
            pids = ray.get(calls, timeout=120)
        except Exception:  # a dead or stuck actor
            return False
        self.pids = set(pids)
        return True

    def kept_pids(self) -> set[int]:
        """The processes of the kept pool (none when no pool is kept)."""
        return set(self.pids) if self.pool is not None else set()

    def take(self, key: tuple) -> Any:
        """The kept pool for ``key``, prepared, or None (a pool for another key is ended)."""
        pool, self.pool = self.pool, None
        if pool is None:
            return None
        if self.pool_key != key or not self.prepare(pool):
            _end(pool)
            return None
        self.reused += 1
        return pool

    def keep(self, pool: Any) -> None:
        if pool is None:
            return
        if pool.num_actors and len(pool.pool) == pool.num_actors and not pool._future_to_actor:
            self.pool = pool
        else:  # a message still running (a straggler, a stopped run): its actor is not reusable
            _end(pool)

    def disconnect(self) -> None:
        """End the kept actors and the driver's connection."""
        import ray

        if self.pool is not None:
            _end(self.pool)
            self.pool = None
        self.connection = None
        if ray.is_initialized():
            ray.shutdown()


def _prepare_actor(_actor: Any, env: dict[str, str], reset: Callable[[], None]) -> int:
    """In an actor: the environment a new actor would get from ``env`` (Confide's variables that
    ``env`` lacks are removed), then ``reset``; the actor's pid."""
    import os

    for key in [k for k in os.environ if k.startswith("CONFIDE_") and k not in env]:
        del os.environ[key]
    os.environ.update(env)
    reset()
    return os.getpid()


def _end(pool: Any) -> None:
    with contextlib.suppress(Exception):
        pool.terminate_all_actors()


_WARM: WarmActors | None = None


def warm() -> WarmActors | None:
    """The warm pool holder while ``warm_actors`` is active in this process, else None."""
    return _WARM


@contextlib.contextmanager
def warm_actors(reset: Callable[[], None]) -> Iterator[WarmActors]:
    """Within the block, in-process simulations that attach to a Ray cluster keep Flower's actors
    and the Ray connection between runs (``WarmActors``); both end with the block."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport import ray_actor

    global _WARM
    if _WARM is not None:
        raise RuntimeError("warm_actors is already active in this process")
    holder = WarmActors(reset)
    build, terminate = RayBackend.build, RayBackend.terminate

    def warm_build(backend: Any, app_fn: Callable[[], Any]) -> None:
        if holder.connection is None:  # not attached through ``attached``: Flower's own pool
            build(backend, app_fn)
            return
        resources = tuple(sorted(backend.client_resources.items()))
        key = (holder.connection, resources, ray_actor.pool_size_from_resources(backend.client_resources))
        pool = holder.take(key)
        if pool is not None:
            backend.pool, backend.app_fn = pool, app_fn
            return
        build(backend, app_fn)
        holder.pool_key = key
        if not holder.prepare(backend.pool):
            raise RuntimeError("a new simulation actor did not start")

    def warm_terminate(backend: Any) -> None:
        if holder.connection is None:  # not attached through ``attached``: Flower's own ending
            terminate(backend)
            return
        holder.keep(backend.pool)
        backend.pool = None

    RayBackend.build, RayBackend.terminate = warm_build, warm_terminate
    _WARM = holder
    try:
        yield holder
    finally:
        RayBackend.build, RayBackend.terminate = build, terminate
        _WARM = None
        holder.disconnect()
