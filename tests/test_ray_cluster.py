"""Simulations and sweeps attached to a running Ray cluster (simulations/ray_cluster.py, local.py, sweep.py, cell.py).

Fast tests, no cluster: a wrong address (nothing listening, a port that is not a Ray head, a Ray
Client URL, a malformed one, RAY_ADDRESS pointing nowhere) stops the run within seconds with one
line naming the address, before any Ray starts; ``--parallel`` without a cluster is refused; a
parallel sweep whose cells fail records why per cell and counts them as failed.

The slow tests start a real two-node cluster on this machine: ``ray start --head`` (2 CPUs) and
one worker node (1 CPU), each a ``ray start --block`` process with its own temp dir, stopped by
PID at the end. They prove that a simulation attached to it runs on it (its driver is a job of
that cluster, with one actor per site, not one per CPU) and leaves it running; that a two-cell
sweep with ``--parallel 2`` runs both cells at once as two drivers of the cluster, writes both
results, and that a rerun skips them; and that the cluster still answers afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfideError
from common.rundir import INCOMPLETE
from simulations.local import simulate
from simulations.ray_cluster import RayCluster, _worker_env, probe_cluster, ray_address_from
from simulations.study.cellstore import CELL_LOG, RESULT, cell_dir, failure_of, load_result
from simulations.study.sweep import main as sweep_main
from simulations.study.sweep import run_sweep
from simulations.study.sweep_spec import load_sweep
from tests.conftest import REPO, small_experiment

TINY_SWEEP = {
    "name": "tiny-cluster",
    "base": {
        "data": {"num_sites": 2, "max_samples": 100},
        "strategy": {"rounds": 1, "min_sites": 2},
        "train": {"batch_size": 16},
    },
    "grid": {"seed": [0, 1]},
    "audit": {"max_records": 20, "reference_models": 0},
    "cpus_per_site": 0.5,  # 6 slots on the 3-CPU test cluster: both 2-site cells fit at once
}


def tiny(**overrides: object) -> Any:
    return small_experiment(**{"strategy.rounds": 1, "data.max_samples": 100, "train.batch_size": 16, **overrides})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def ray_is_initialized() -> bool:
    import ray

    return bool(ray.is_initialized())


# --------------------------------------------------------------------------- wrong addresses, no cluster


@pytest.mark.unit
def test_nothing_listening_stops_in_seconds_naming_the_address(project_root: Path, no_ray_address: None) -> None:
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConfideError, match=rf"^no Ray cluster at {re.escape(address)}: .*refused"):
        simulate(tiny(), ray_address=address)
    assert time.monotonic() - start < 10
    assert not ray_is_initialized()  # no private Ray instead
    assert not (project_root / "runs").exists()


@pytest.mark.unit
def test_a_port_that_is_not_a_ray_head_stops_within_the_probe_timeout(no_ray_address: None) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(ConfideError, match=rf"no Ray cluster answered at {re.escape(address)} within 2 s"):
            probe_cluster(address, timeout=2.0)
        assert time.monotonic() - start < 6


@pytest.mark.unit
@pytest.mark.parametrize(
    ("address", "message"),
    [("ray://head:10001", "Ray Client .* not supported"), ("head", "is not HOST:PORT"), ("head:http", "HOST:PORT")],
)
def test_ray_client_and_malformed_addresses_are_refused(address: str, message: str, no_ray_address: None) -> None:
    with pytest.raises(ConfideError, match=message):
        simulate(tiny(), ray_address=address)
    assert not ray_is_initialized()


@pytest.mark.unit
def test_the_ray_address_variable_is_honoured_like_ray_does(monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    assert ray_address_from(None) == address
    assert ray_address_from("10.0.0.1:6379") == "10.0.0.1:6379"  # an explicit address wins
    with pytest.raises(ConfideError, match=re.escape(address)):
        simulate(tiny())  # attaching is never silently replaced by a private Ray
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert ray_address_from(None) is None


@pytest.mark.unit
def test_parallel_sweep_needs_a_reachable_cluster(tmp_path: Path, no_ray_address: None, capsys: Any) -> None:
    file, out = tmp_path / "tiny.yaml", tmp_path / "out"
    file.write_text(json.dumps(TINY_SWEEP))
    handler = signal.getsignal(signal.SIGINT)
    try:
        assert sweep_main([str(file), "--out", str(out), "--parallel", "2"]) == 2
        assert "--parallel needs a Ray cluster" in capsys.readouterr().err
        address = f"127.0.0.1:{free_port()}"
        assert sweep_main([str(file), "--out", str(out), "--ray-address", address, "--parallel", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"confide: no Ray cluster at {address}")
    finally:
        signal.signal(signal.SIGINT, handler)
    assert not out.exists()  # stopped before any cell


@pytest.mark.system
def test_failed_parallel_cells_are_recorded_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent sees a cluster (stubbed); each cell's process probes for itself, finds none and fails."""
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setattr("simulations.study.sweep.probe_cluster", lambda a: RayCluster(a, ({"CPU": 4.0},)))
    file, out = tmp_path / "tiny.yaml", tmp_path / "out"
    file.write_text(json.dumps(TINY_SWEEP))
    sweep = load_sweep(file)
    lines: list[str] = []
    counts = run_sweep(sweep, out, report=False, echo=lines.append, ray_address=address, parallel=2)
    assert counts == {"cells": 2, "skipped": 0, "ran": 0, "failed": 2}
    for cell in sweep.cells:
        folder = cell_dir(out, cell.id)
        assert load_result(folder, cell.id) is None
        assert f"no Ray cluster at {address}" in (failure_of(folder) or "")
        assert "confide-cell: no Ray cluster" in (folder / CELL_LOG).read_text()
    assert sum(": FAILED: no Ray cluster" in line for line in lines) == 2, lines


# --------------------------------------------------------------------------- a real cluster on this machine


@dataclass
class Cluster:
    address: str
    procs: list[subprocess.Popen[bytes]]  # the head's and the worker's `ray start --block`
    temp: Path


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    psutil = pytest.importorskip("psutil")
    ray_cli = Path(sys.executable).with_name("ray")
    cli = str(ray_cli) if ray_cli.exists() else shutil.which("ray")
    if cli is None:
        pytest.skip("the `ray` CLI is not installed")
    temp = Path(tempfile.mkdtemp(prefix="cfray-", dir="/tmp"))  # short: Ray's unix sockets live under it
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    both = ["--block", "--node-ip-address", "127.0.0.1", "--num-gpus", "0", "--disable-usage-stats"]
    both += ["--temp-dir", str(temp), "--object-store-memory", str(100 * 2**20)]
    head = [cli, "start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false"]
    head += ["--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port())]
    worker = [cli, "start", "--address", address, "--num-cpus", "1"]
    worker += ["--dashboard-agent-listen-port", str(free_port())]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, cmd, nodes in (("head", head, 1), ("worker", worker, 2)):
            with (temp / f"{name}.log").open("wb") as log:
                # started outside the project: the cluster's workers find it only through what the driver sends
                procs.append(
                    subprocess.Popen([*cmd, *both], cwd=temp, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
                )
            wait_for_nodes(address, nodes, procs, temp)
        yield Cluster(address, procs, temp)
    finally:
        stop_cluster(procs, temp, psutil)
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_nodes(address: str, nodes: int, procs: list[subprocess.Popen[bytes]], temp: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for proc, name in zip(procs, ("head", "worker")):
            if proc.poll() is not None:
                pytest.fail(f"`ray start` ({name}) exited: {(temp / f'{name}.log').read_text()[-3000:]}")
        try:
            if len(probe_cluster(address, timeout=10).nodes) >= nodes:
                return
        except ConfideError:
            pass
        time.sleep(1)
    pytest.fail(f"the test cluster at {address} did not reach {nodes} node(s)")


def stop_cluster(procs: list[subprocess.Popen[bytes]], temp: Path, psutil: Any) -> None:
    """SIGTERM each `ray start --block` (it stops its node's processes), SIGKILL what is left after
    30 s: only these processes' descendants and processes naming this cluster's own temp dir."""
    tree = []
    for proc in procs:
        try:
            root = psutil.Process(proc.pid)
            tree += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in reversed(procs):  # the worker first, then the head
        proc.terminate()
    _, alive = psutil.wait_procs(tree, timeout=30)
    strays = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
    for p in [*alive, *strays]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    for proc in procs:
        proc.wait(timeout=30)


def jobs(address: str) -> dict[str, Any]:
    """The cluster's jobs (drivers), by job id: pid, entrypoint, start and end times."""
    from ray._raylet import GcsClient

    return {j.job_id.hex(): j for j in GcsClient(address=address).get_all_job_info(timeout=10).values()}


def actors_per_job(address: str) -> Counter[str]:
    import ray

    ray.init(address=address, logging_level=logging.ERROR)
    try:
        return Counter(a["JobID"] for a in ray._private.state.actors().values())
    finally:
        ray.shutdown()


def assert_still_running(cluster: Cluster) -> None:
    assert [p.poll() for p in cluster.procs] == [None, None]
    assert len(probe_cluster(cluster.address, timeout=10).nodes) == 2


@pytest.mark.system
@pytest.mark.slow
def test_attached_simulation_runs_on_the_cluster_and_leaves_it_running(
    ray_cluster: Cluster, project_root: Path, no_ray_address: None
) -> None:
    before = jobs(ray_cluster.address)
    run = simulate(tiny(), ray_address=ray_cluster.address)
    assert run.parent == project_root / "runs" and not run.name.endswith(INCOMPLETE)
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rounds) == 2 and set(rounds[-1]["sites"]) == {"site-0", "site-1"}
    assert not ray_is_initialized()  # the driver disconnected
    new = {k: j for k, j in jobs(ray_cluster.address).items() if k not in before}
    assert [j.driver_pid for j in new.values()] == [os.getpid()]  # it ran here, not on a private Ray
    (job,) = new
    assert actors_per_job(ray_cluster.address)[job] == 2  # one per site; Flower alone makes one per CPU (3)
    assert_still_running(ray_cluster)


@pytest.mark.system
@pytest.mark.slow
def test_parallel_sweep_runs_both_cells_at_once_on_the_cluster_and_leaves_it_running(
    ray_cluster: Cluster, tmp_path: Path
) -> None:
    file, out = tmp_path / "tiny.yaml", tmp_path / "out"
    file.write_text(json.dumps(TINY_SWEEP))
    sweep = load_sweep(file)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"CONFIDE_ROOT": str(tmp_path)}
    cmd = [sys.executable, "-m", "simulations.study.sweep", str(file), "--out", str(out), "--no-report"]
    cmd += ["--ray-address", ray_cluster.address, "--parallel", "2"]
    before = jobs(ray_cluster.address)
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = [load_result(cell_dir(out, c.id), c.id) for c in sweep.cells]
    assert all(r is not None and {"final_accuracy", "mia_loss_auc"} <= set(r["metrics"]) for r in results)
    progress = [line for line in first.stdout.splitlines() if line.startswith("[sweep] cell")]
    assert [line.endswith(": running") for line in progress] == [True, True, False, False], progress
    assert sum(" done in " in line for line in progress) == 2
    new = [j for k, j in jobs(ray_cluster.address).items() if k not in before]
    assert len(new) == 2 and all("--ray-address" in j.entrypoint for j in new)  # one driver per cell
    assert max(j.start_time for j in new) < min(j.end_time for j in new)  # at the same time
    per_job = actors_per_job(ray_cluster.address)
    assert [per_job[j.job_id.hex()] for j in new] == [2, 2]  # 2 sites each, not 6 slots each
    assert_still_running(ray_cluster)

    stamps = [(cell_dir(out, c.id) / RESULT).stat().st_mtime_ns for c in sweep.cells]
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 ran, 2 skipped, 0 failed" in again.stdout
    assert [(cell_dir(out, c.id) / RESULT).stat().st_mtime_ns for c in sweep.cells] == stamps
    assert_still_running(ray_cluster)


@pytest.mark.unit
def test_worker_env_carries_the_import_path_and_project_root(project_root: Path) -> None:
    env = _worker_env()
    assert str(REPO) in env["PYTHONPATH"].split(os.pathsep)
    assert env["CONFIDE_ROOT"] == str(project_root.resolve())
