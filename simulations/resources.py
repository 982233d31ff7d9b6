"""What one simulated site asks of the machine, checked before Ray starts.

Flower's simulation engine sizes its actor pool from Ray's resources: a site that asks for more
CPUs than a node has, or for a GPU on a machine without one, leaves the pool empty ("ActorPool is
empty") and the run waits forever. Checked here, the same request ends in one line instead.
"""

from __future__ import annotations

import os

from common.errors import ConfideError
from simulations.ray_cluster import RayCluster


def local_cpus() -> int:
    """CPUs this process may use (its affinity, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_site_resources(cpus: float, gpus: float, cluster: RayCluster | None = None) -> None:
    """Refuse a per-site request that no node can hold (``--cpus-per-site``, ``--gpus-per-site``)."""
    if not cpus > 0:
        raise ConfideError(f"--cpus-per-site must be > 0; got {cpus:g}")
    if not gpus >= 0:
        raise ConfideError(f"--gpus-per-site must be >= 0; got {gpus:g}")
    if cluster is not None:
        if cluster.slots(cpus, gpus) == 0:
            raise ConfideError(
                f"no node of the Ray cluster at {cluster.address} ({cluster.describe()}) has {cpus:g} CPUs"
                + (f" and {gpus:g} GPUs" if gpus else "")
                + " for one site; lower --cpus-per-site / --gpus-per-site"
            )
        return
    have = local_cpus()
    if cpus > have:
        raise ConfideError(f"--cpus-per-site {cpus:g} is more than this machine's {have} CPUs; use at most {have}")
    if gpus > 0:
        n = local_gpus()
        if n == 0:
            raise ConfideError(f"--gpus-per-site {gpus:g} asks for a GPU, and this machine has none (CUDA)")
        if gpus > n:
            raise ConfideError(f"--gpus-per-site {gpus:g} is more than this machine's {n} GPUs")
