"""An incomplete run folder knows its writer (common/run_owner.py): a folder whose process was
killed outright (no FAILED.txt could be written) is marked as such by the next run in the same
output folder and reported by ``failure_of``; a folder another live process is writing cannot be
resumed under it; another host's record is not judged; a complete folder carries no record."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import psutil
import pytest

from common import config, run_owner, rundir
from common.errors import ConfigError


def experiment(tmp_path: Path) -> config.ExperimentConfig:
    return config.load("simulations/configs/default.yaml", {"output_dir": str(tmp_path)})


def forge(folder: Path, pid: int, started: float | None, host: str | None = None) -> None:
    record = {"pid": pid, "started": started, "host": host or socket.gethostname()}
    (folder / run_owner.FILE).write_text(json.dumps(record))


def killed_folder(tmp_path: Path, name: str = "20260101-000000-x-1.incomplete") -> Path:
    """A folder whose recorded writer is the parent process under a different start time: the
    same pid reused by another process, i.e. the writer is gone."""
    folder = tmp_path / name
    folder.mkdir()
    forge(folder, os.getppid(), psutil.Process(os.getppid()).create_time() - 1000.0)
    return folder


@pytest.mark.unit
def test_a_new_run_claims_its_folder_and_a_finished_one_drops_the_claim(tmp_path: Path) -> None:
    run = rundir.RunDir(experiment(tmp_path), run_id="7")
    owner = json.loads((run.path / run_owner.FILE).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert run_owner.gone(run.path) is None and run_owner.alive_writer(run.path) is None  # this process
    final = run.finish()
    assert not (final / run_owner.FILE).exists()


@pytest.mark.unit
def test_a_killed_writer_is_reported_and_marked_by_the_next_run(tmp_path: Path) -> None:
    folder = killed_folder(tmp_path)
    reason = rundir.failure_of(folder)
    assert reason is not None and f"pid {os.getppid()}" in reason and "killed" in reason
    assert not (folder / rundir.FAILED).exists()  # reading changes nothing
    rundir.RunDir(experiment(tmp_path), run_id="8")
    assert (folder / rundir.FAILED).read_text().strip() == reason


@pytest.mark.unit
def test_a_failed_or_live_folder_is_not_marked(tmp_path: Path) -> None:
    failed = killed_folder(tmp_path, "a.incomplete")
    (failed / rundir.FAILED).write_text("stopped: SIGTERM\n")
    live = tmp_path / "b.incomplete"
    live.mkdir()
    forge(live, os.getppid(), psutil.Process(os.getppid()).create_time())
    assert rundir.mark_abandoned(tmp_path) == []
    assert (failed / rundir.FAILED).read_text() == "stopped: SIGTERM\n"
    assert rundir.failure_of(live) is None


@pytest.mark.unit
def test_another_hosts_record_is_not_judged(tmp_path: Path) -> None:
    folder = tmp_path / "c.incomplete"
    folder.mkdir()
    forge(folder, 999_999_999, 1.0, host="another-host")
    assert run_owner.gone(folder) is None and run_owner.alive_writer(folder) is None


@pytest.mark.unit
def test_resuming_a_folder_another_live_process_writes_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "d.incomplete"
    folder.mkdir()
    forge(folder, os.getppid(), psutil.Process(os.getppid()).create_time())
    with pytest.raises(ConfigError, match=f"still being written by process {os.getppid()}"):
        rundir.check_resumable(folder, experiment(tmp_path))


@pytest.mark.system
def test_a_killed_writer_not_yet_reaped_is_gone(tmp_path: Path) -> None:
    """A writer killed with SIGKILL stays a zombie until its parent reaps it (a SuperLink's
    ServerApp, seen in CI): it writes nothing more, so its folder may be resumed and is reported
    as killed."""
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "20260101-000000-x-2.incomplete"
        folder.mkdir()
        forge(folder, child.pid, psutil.Process(child.pid).create_time())
        assert run_owner.alive_writer(folder) == child.pid  # running: a live writer
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE  # not reaped: no wait() yet
        assert run_owner.alive_writer(folder) is None
        assert "killed" in (run_owner.gone(folder) or "")
    finally:
        child.kill()
        child.wait()
