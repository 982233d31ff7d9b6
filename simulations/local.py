"""In-process simulation: the same ServerApp and ClientApp as ``flwr run .``, started with
Flower's ``run_simulation`` (Ray backend) for a given experiment. Used by tests,
benchmarks and sweeps; ``flwr run .`` remains the user-facing way to run a job.

    python -m simulations.local simulations/configs/default.yaml --set train.lr=0.01
    python -m simulations.local simulations/configs/default.yaml --ray-address HEAD_IP:6379

Without ``--ray-address`` (or ``RAY_ADDRESS``) each simulation starts a private Ray instance and
stops it at the end; with it, the simulation attaches to that running cluster and leaves it
running (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import config as config_mod
from common import logs
from common.config import ExperimentConfig
from common.errors import ConfideError
from common.rundir import INCOMPLETE, failure_of

log = logging.getLogger(__name__)


def simulate(
    exp: ExperimentConfig,
    cpus_per_site: float = 1.0,
    threads_per_site: int = 1,
    client_mods: list | None = None,
    gpus_per_site: float = 0.0,
    resume: Path | None = None,
    ray_address: str | None = None,
) -> Path:
    """Run the experiment with ``data.num_sites`` simulated sites; return the run folder.
    ``gpus_per_site``: each site's share of a GPU in Flower's simulation backend (e.g. 0.25 runs
    four sites at once per GPU); 0 keeps them on the CPU. ``resume``: a stopped run's folder
    (``<...>.incomplete``) to continue from its checkpoint instead of starting a new run.
    ``ray_address``: a running Ray cluster's HOST:PORT (or ``auto``) to attach to instead of
    starting a private Ray instance; ``RAY_ADDRESS`` when not given (see ``ray_address_from``)."""
    if gpus_per_site < 0:
        raise ConfideError(f"gpus_per_site must be >= 0; got {gpus_per_site}")
    from flwr.simulation import run_simulation

    from client.app import create_client_app
    from server.app import create_server_app
    from server.run import preflight

    address = ray_address_from(ray_address)
    cluster = probe_cluster(address) if address else None  # a wrong address stops here, in seconds
    preflight(exp, resume)  # a bad data file, label or run folder stops here, before Ray starts

    if exp.train.threads == 0 and threads_per_site:
        exp = config_mod.replace(exp, **{"train.threads": threads_per_site})
    before = _runs(exp)
    # "local": a private instance even if a `ray start` on this machine left an address file
    # that a bare ray.init() would silently attach to.
    init_args = {"logging_level": "ERROR", "log_to_driver": True} | ({} if cluster else {"address": "local"})
    with attached(cluster, max_actors=exp.data.num_sites) if cluster else nullcontext():
        run_simulation(
            server_app=create_server_app(exp, resume=resume),
            client_app=create_client_app(exp, mods=client_mods),
            num_supernodes=exp.data.num_sites,
            backend_config={
                "client_resources": {"num_cpus": cpus_per_site, "num_gpus": gpus_per_site},
                "init_args": init_args,
            },
        )
    new = sorted(_runs(exp) - before)
    if resume is not None:  # the resumed folder existed before: it is renamed when complete
        finished = resume.with_name(resume.name.removesuffix(INCOMPLETE))
        if finished.is_dir() and not resume.exists():
            return finished
        new = [resume]
    complete = [p for p in new if not p.name.endswith(INCOMPLETE)]
    if complete:
        return complete[-1]
    # Flower's in-process engine neither re-raises the ServerApp's exit nor always waits for
    # its thread to unwind: wait briefly for the reason the run folder records.
    deadline = time.monotonic() + 30
    while new and not any(map(failure_of, new)) and time.monotonic() < deadline:
        time.sleep(0.2)
    reasons = [r for r in map(failure_of, new) if r]
    raise ConfideError(
        reasons[-1]
        if reasons
        else f"the simulation of '{exp.name}' ended without a complete run folder in "
        f"{config_mod.resolve_path(exp.output_dir)} (see the log above)"
    )


def _runs(exp: ExperimentConfig) -> set[Path]:
    base = config_mod.resolve_path(exp.output_dir)
    return {p for p in base.iterdir() if (p / "config.yaml").is_file()} if base.exists() else set()


# --------------------------------------------------------------------------- attaching to a Ray cluster

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


def probe_cluster(address: str, timeout: float = PROBE_TIMEOUT_S) -> RayCluster:
    """The cluster at ``address`` (HOST:PORT or ``auto``), checked within seconds: something
    listens there, it is a Ray head that answers, and it runs this environment's Ray and Python."""
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
    disconnects the driver; its actors end, the cluster keeps running."""
    import ray
    from flwr.simulation.ray_transport import ray_actor

    if ray.is_initialized():
        raise ConfideError(f"Ray is already initialised in this process; cannot attach it to {cluster.address}")
    try:
        ray.init(
            address=cluster.address,
            runtime_env={"env_vars": _worker_env()},
            logging_level=logging.ERROR,
            log_to_driver=True,
        )
    except Exception as exc:
        raise ConfideError(f"could not attach to the Ray cluster at {cluster.address}: {_first_line(exc)}") from None
    log.info("attached to the Ray cluster at %s (%s), up to %d actors", cluster.address, cluster.describe(), max_actors)
    original = ray_actor.pool_size_from_resources

    def capped(client_resources: dict[str, int | float]) -> int:
        return min(original(client_resources), max_actors)

    ray_actor.pool_size_from_resources = capped
    try:
        yield
    finally:
        ray_actor.pool_size_from_resources = original
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


def parse_sets(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfideError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="experiment YAML file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable), e.g. --set train.lr=0.01",
    )
    parser.add_argument("--cpus-per-site", type=float, default=1.0)
    parser.add_argument("--gpus-per-site", type=float, default=0.0, help="each site's GPU share (e.g. 0.25)")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_FOLDER",
        help="continue a stopped run (runs/<...>.incomplete) from its last checkpointed round; give the "
        "same experiment and --set overrides as the run it continues",
    )
    parser.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="attach to this running Ray cluster (its head's address, or 'auto') instead of starting a "
        "private Ray instance; it is left running. Default: $RAY_ADDRESS if set (docs/cluster.md)",
    )
    args = parser.parse_args(argv)
    logs.setup()
    try:
        exp = config_mod.load(args.experiment, parse_sets(args.set))
        path = simulate(
            exp,
            cpus_per_site=args.cpus_per_site,
            gpus_per_site=args.gpus_per_site,
            resume=args.resume,
            ray_address=args.ray_address,
        )
    except ConfideError as exc:
        print(f"confide: {exc}", file=sys.stderr)
        return 2
    print(f"run folder: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
