"""Per-site resource requests are checked against the machine (or the cluster) before Ray starts:
a request no node can hold would leave Flower's actor pool empty and the run waiting forever."""

from __future__ import annotations

import pytest

from common.errors import ConfideError
from simulations import resources
from simulations.ray_cluster import RayCluster

pytestmark = pytest.mark.unit


@pytest.fixture
def two_cpus_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "local_cpus", lambda: 2)
    monkeypatch.setattr(resources, "local_gpus", lambda: 0)


@pytest.mark.usefixtures("two_cpus_no_gpu")
@pytest.mark.parametrize(
    ("cpus", "gpus", "message"),
    [
        (4, 0, "more than this machine's 2 CPUs"),
        (0, 0, "must be > 0"),
        (-1, 0, "must be > 0"),
        (float("nan"), 0, "must be > 0"),
        (1, 1, "asks for a GPU, and this machine has none"),
        (1, -0.5, "must be >= 0"),
    ],
)
def test_requests_the_machine_cannot_hold_are_refused(cpus: float, gpus: float, message: str) -> None:
    with pytest.raises(ConfideError, match=message):
        resources.check_site_resources(cpus, gpus)


@pytest.mark.usefixtures("two_cpus_no_gpu")
def test_requests_within_the_machine_pass() -> None:
    resources.check_site_resources(2, 0)
    resources.check_site_resources(0.5, 0)


def test_gpu_share_is_checked_against_the_gpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "local_cpus", lambda: 16)
    monkeypatch.setattr(resources, "local_gpus", lambda: 1)
    resources.check_site_resources(1, 0.25)
    with pytest.raises(ConfideError, match="more than this machine's 1 GPUs"):
        resources.check_site_resources(1, 2)


def test_a_cluster_is_checked_node_by_node_not_against_this_machine() -> None:
    """Two nodes of 4 CPUs: a 4-CPU site fits (beyond a 2-CPU laptop), a 6-CPU one fits no node."""
    cluster = RayCluster(address="10.0.0.1:6379", nodes=({"CPU": 4.0}, {"CPU": 4.0}))
    resources.check_site_resources(4, 0, cluster)
    with pytest.raises(ConfideError, match="no node of the Ray cluster at 10.0.0.1:6379 .* has 6 CPUs"):
        resources.check_site_resources(6, 0, cluster)
    with pytest.raises(ConfideError, match="and 1 GPUs"):
        resources.check_site_resources(1, 1, cluster)
