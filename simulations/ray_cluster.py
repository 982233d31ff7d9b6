"""Attaching a simulation to a running Ray cluster (docs/cluster.md): the address (explicit or
``RAY_ADDRESS``), a probe that fails in seconds on a wrong one, the environment sent to the
cluster's workers, and a cap of one Flower actor per site while attached.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from common import config as config_mod
from common.errors import ConfideError

log = logging.getLogger(__name__)

RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own convention: ray.init() and the ray CLI read it too
PROBE_TIMEOUT_S = 15.0  # ray.init retries an address that is not a Ray head for minutes
# Sent to the cluster's workers, which inherit the environment of `ray start`, not this process's.
WORKER_ENV = ("HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class RayCluster:
    """A running Ray cluster as its head's GCS reports it."""

    address: str  # HOST:PORT of the head's GCS
    nodes: tuple[dict[str, float], ...]  # every alive node's total resources (CPU, GPU, memory, ...)

    def total(self, resource: str) -> float:
        return sum(n.get(resource, 0.0) for n in self.nodes)

    def slots(self, cpus: float, gpus: float = 0.0) -> int:
        """How many actors of this size fit, node by node (how Flower sizes its actor pool)."""
        fits = [int(n.get("CPU", 0.0) / cpus) for n in self.nodes]
        if gpus > 0:
            fits = [min(f, int(n.get("GPU", 0.0) / gpus)) for f, n in zip(fits, self.nodes)]
        return sum(fits)

    def describe(self) -> str:
        gpus = self.total("GPU")
        return f"{len(self.nodes)} node(s), {self.total('CPU'):g} CPUs" + (f", {gpus:g} GPUs" if gpus else "")


def ray_address_from(explicit: str | None) -> str | None:
    """The cluster to attach to: ``explicit``, else $RAY_ADDRESS (which ray.init() would follow
    anyway), else None: a private Ray instance for this simulation alone."""
    return explicit or os.environ.get(RAY_ADDRESS_ENV) or None


def probe_cluster(address: str, timeout: float | None = None) -> RayCluster:
    """The cluster at ``address`` (HOST:PORT or ``auto``), checked within seconds: something
    listens there, it is a Ray head that answers (within ``timeout``, default PROBE_TIMEOUT_S),
    and it runs this environment's Ray and Python."""
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    if "://" in address:
        raise ConfideError(
            f"Ray address '{address}': Ray Client (ray://) is not supported; run on a node of the cluster "
            "and give its head's HOST:PORT (docs/cluster.md)"
        )
    if address == "auto":
        address = _auto_address()
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfideError(f"Ray address '{address}' is not HOST:PORT (its head's GCS port, 6379 by default) or 'auto'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout, 5.0)).close()
    except OSError as exc:
        raise ConfideError(
            f"no Ray cluster at {address}: {exc.strerror or exc} (is `ray start --head` running there?)"
        ) from None
    meta, nodes = _ask_gcs(address, timeout)
    import ray

    theirs, ours = meta.get("ray_version"), ray.__version__
    if theirs and theirs != ours:
        raise ConfideError(
            f"the Ray cluster at {address} runs Ray {theirs}, this environment Ray {ours}; they must match"
        )
    py = ".".join(map(str, sys.version_info[:2]))
    if meta.get("python_version") and not str(meta["python_version"]).startswith(py + "."):
        raise ConfideError(
            f"the Ray cluster at {address} runs Python {meta['python_version']}, this environment Python {py}; "
            "they must match"
        )
    cluster = RayCluster(address, tuple(nodes))
    if not cluster.total("CPU"):
        raise ConfideError(f"the Ray cluster at {address} has no node with CPUs to run sites on")
    return cluster


def _auto_address() -> str:
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        return str(canonicalize_bootstrap_address_or_die("auto"))
    except (ConnectionError, ValueError) as exc:
        raise ConfideError(f"Ray address 'auto': {_first_line(exc)}") from None


def _ask_gcs(address: str, timeout: float) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """The cluster's metadata and alive nodes' resources, from its GCS (as `ray health-check`
    asks it), in a thread abandoned after ``timeout``: the client itself retries for ~40 s."""
    from ray._common.usage.usage_lib import get_cluster_metadata
    from ray._raylet import GcsClient

    box: dict[str, Any] = {}

    def ask() -> None:
        try:
            client = GcsClient(address=address)
            box["meta"] = get_cluster_metadata(client) or {}
            infos = client.get_all_node_info(timeout=int(timeout)).values()
            box["nodes"] = [dict(n.resources_total) for n in infos if n.state == type(n).ALIVE]
        except Exception as exc:  # any failure here means: not a usable Ray head
            box["error"] = exc

    thread = threading.Thread(target=ask, name="ray-gcs-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ConfideError(f"no Ray cluster answered at {address} within {timeout:g} s (something listens there)")
    if "error" in box:
        raise ConfideError(f"no Ray cluster at {address}: {_first_line(box['error'])}")
    return box["meta"], box["nodes"]


@contextmanager
def attached(cluster: RayCluster, max_actors: int) -> Iterator[None]:
    """This process as a Ray driver of ``cluster`` for one simulation; disconnected afterwards.

    Flower's RayBackend calls ray.init only if Ray is not initialised yet, so connecting here
    lets the cluster's workers get the environment they need (never num_cpus/num_gpus, which
    ray.init refuses for an existing cluster). Flower sizes its actor pool to every CPU of the
    cluster (``pool_size_from_resources`` over ``ray.nodes()``): here it is capped at the number
    of sites, so a simulation holds no idle actors on a shared cluster and concurrent sweep cells
    cannot wait on each other's. ray.shutdown() (Flower's at the end, and this one) only
    disconnects the driver; its actors end, the cluster keeps running. While
    ``flower_internals.warm_actors`` is active, the connection and the actors are kept for the
    next simulation on the same cluster instead, and each simulation's worker environment is
    given to the actors it takes over."""
    import ray
    from flwr.simulation.ray_transport import ray_actor

    from server import flower_internals

    env = _worker_env()
    warm = flower_internals.warm()
    if warm is not None and warm.connection != cluster.address:
        warm.disconnect()  # kept for another cluster
    if warm is None or warm.connection is None:
        if ray.is_initialized():
            raise ConfideError(f"Ray is already initialised in this process; cannot attach it to {cluster.address}")
        try:
            ray.init(
                address=cluster.address,
                runtime_env={"env_vars": env},
                logging_level=logging.ERROR,
                log_to_driver=True,
            )
        except Exception as exc:
            raise ConfideError(
                f"could not attach to the Ray cluster at {cluster.address}: {_first_line(exc)}"
            ) from None
        if warm is not None:
            warm.connection = cluster.address
    if warm is not None:
        warm.env = env  # each actor gets it before the simulation's first message
    log.info("attached to the Ray cluster at %s (%s), up to %d actors", cluster.address, cluster.describe(), max_actors)
    original = ray_actor.pool_size_from_resources

    def capped(client_resources: dict[str, int | float]) -> int:
        return min(original(client_resources), max_actors)

    ray_actor.pool_size_from_resources = capped
    try:
        yield
    finally:
        ray_actor.pool_size_from_resources = original
        if warm is None:
            ray.shutdown()


def _worker_env() -> dict[str, str]:
    """The import path (as Flower's RayBackend sends it), the root that relative config paths
    resolve against, and the Hugging Face cache/offline settings of this process."""
    paths = [p or os.getcwd() for p in sys.path] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = {k: os.environ[k] for k in WORKER_ENV if os.environ.get(k)}
    return {**env, "PYTHONPATH": os.pathsep.join(paths), "CONFIDE_ROOT": str(config_mod.project_root().resolve())}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
