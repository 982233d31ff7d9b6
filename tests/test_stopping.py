"""A run stopped by a signal says so in FAILED.txt, stays resumable, and leaves no Ray process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import rundir, stopping
from common.rundir import FAILED, RunDir, failure_of
from server import flower_runtime
from tests.conftest import small_experiment

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.unit
def test_record_stop_writes_the_reason_in_every_open_run_folder() -> None:
    run = RunDir(small_experiment(), "7")
    folders = rundir.record_stop(stopping.reason(signal.SIGTERM))
    assert folders == [run.path] and run.path.name.endswith(rundir.INCOMPLETE)
    assert failure_of(run.path).startswith("stopped by signal SIGTERM")
    assert rundir.record_stop("again") == []  # recorded once; the folder is no longer open


@pytest.mark.unit
def test_a_finished_or_failed_run_is_not_touched() -> None:
    done, failed = RunDir(small_experiment(name="a"), "1"), RunDir(small_experiment(name="b"), "2")
    path = done.finish()
    failed.fail("data file not found")
    assert rundir.record_stop("stopped") == []
    assert not (path / FAILED).exists() and failure_of(failed.path) == "data file not found"


@pytest.mark.unit
def test_reason_names_the_signal() -> None:
    assert stopping.reason(signal.SIGINT).startswith("stopped by signal SIGINT (Ctrl-C or `flwr stop`)")
    assert "resumable" in stopping.reason(None)


@pytest.mark.unit
def test_the_signal_is_read_from_flowers_handler_frame() -> None:
    def graceful_exit_handler(signalnum: int, _frame: object) -> int | None:  # Flower's name
        return flower_runtime.flower_signal()

    assert graceful_exit_handler(signal.SIGTERM, None) == signal.SIGTERM
    assert flower_runtime.flower_signal() is None


def fake_proc(root: Path, parents: dict[int, int]) -> Path:
    for pid, ppid in parents.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "stat").write_text(f"{pid} (ray::Worker) a b) S {ppid} {pid} 0 0\n")
    return root


@pytest.mark.unit
def test_descendants_walks_the_tree_and_only_it(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 21: 20})
    assert sorted(stopping.descendants(10, proc)) == [11, 12, 13]
    assert stopping.descendants(12, proc) == []


@pytest.mark.system
@pytest.mark.slow
def test_ctrl_c_records_the_stop_and_ends_the_ray_processes(tmp_path: Path) -> None:
    # No baseline: its 50 rounds would come before the job's, and the stop is the point here.
    sets = ["data.num_sites=2", "strategy.min_sites=2", "data.max_samples=400", "strategy.rounds=50"]
    sets.append("baseline.features=off")
    cmd = [sys.executable, "-m", "simulations.local", str(REPO / "simulations/configs/default.yaml")]
    cmd += [f"--set={s}" for s in sets]
    env = {**os.environ, "CONFIDE_ROOT": str(tmp_path), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("[confide] round 2 |"):  # round 1 checkpointed by now
            break
    children = stopping.descendants(proc.pid)
    assert children, "".join(lines)  # the private Ray instance
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, "".join(lines) + rest
    (folder,) = (tmp_path / "runs").glob("*.incomplete")
    assert failure_of(folder).startswith("stopped by signal SIGINT"), rest
    assert (folder / "checkpoint.pt").is_file()  # resumable
    assert f"--resume {folder}" in rest
    deadline = time.monotonic() + 10
    while [p for p in children if Path(f"/proc/{p}").exists()] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in children if Path(f"/proc/{p}").exists()]
