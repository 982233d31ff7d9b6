"""The user-facing path: `flwr run . --stream` with a run-config override, through Flower's own
CLI, local SuperLink and simulation engine (separate processes), in an isolated FLWR_HOME.

Proves: pyproject's app components and run-config keys work, overrides reach the experiment,
the app bundle builds, and the run folder lands where CONFIDE_ROOT points. The SuperLink
that `flwr run` starts in the background is stopped by process id afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_deploy import wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
LOCAL_CONTROL_PORT = 39093  # flwr's fixed port for its managed local SuperLink


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def superlinks_under(home: Path) -> list[int]:
    """Process ids of SuperLinks whose database lives in ``home`` (read from /proc, untruncated)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "flower-superlink" in args and str(home) in args:
            pids.append(int(proc.name))
    return pids


def flwr_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "CONFIDE_ROOT": str(tmp_path),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def run_with_superlink(cmd: list[str], tmp_path: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run a command that starts Flower's managed local SuperLink; stop that SuperLink afterwards."""
    if port_in_use(LOCAL_CONTROL_PORT):
        pytest.skip("a local Flower SuperLink is already running on 127.0.0.1:39093; stop it to run this test")
    home = tmp_path / "flwr-home"
    try:
        return subprocess.run(cmd, env=flwr_env(tmp_path), capture_output=True, text=True, timeout=420, cwd=cwd)
    finally:
        for pid in superlinks_under(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(1)
        for pid in superlinks_under(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15  # a loaded machine can take a moment to tear a process down
        while superlinks_under(home) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not superlinks_under(home)


def test_flwr_run_local_simulation_with_override(tmp_path: Path) -> None:
    cmd = [
        str(Path(sys.executable).parent / "flwr"),
        "run",
        str(REPO),
        "--stream",
        "--federation-config",
        "num-supernodes=2",
        "--run-config",
        "data.num_sites=2 strategy.rounds=1 data.max_samples=300 name='cli-run'",
    ]
    proc = run_with_superlink(cmd, tmp_path, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "[confide] run folder:" in output
    (run,) = [p for p in (tmp_path / "runs").iterdir() if (p / "config.yaml").is_file()]  # runs/ledgers aside
    assert run.name.split("-")[2:4] == ["cli", "run"] and not run.name.endswith(".incomplete")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1]
    assert set(lines[1]["sites"]) == {"site-0", "site-1"}


def test_a_failed_run_exits_non_zero_from_run_local_and_flower_records_it_failed(tmp_path: Path) -> None:
    """A run that passes every check before Flower starts and then fails inside the ServerApp (a
    site crashes, leaving fewer valid updates than strategy.min_sites): scripts/run-local.sh (over
    `flwr run`, which itself exits 0 whatever the run's fate) exits 1, the error names the round and
    the key, with no traceback around it, and Flower's own record of the run is finished:failed."""
    overrides = "faults.crash_site=0 strategy.min_sites=3 strategy.rounds=1"
    cmd = ["bash", str(REPO / "scripts" / "run-local.sh"), "simulations/configs/default.yaml", overrides]
    proc = run_with_superlink(cmd, tmp_path, cwd=REPO)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "round 1: 2 valid update(s), fewer than strategy.min_sites=3" in output, output[-3000:]
    assert "injected crash of site" in output
    assert "ended as finished:failed" in output
    # Flower's traceback around the ServerApp's RunFailed is dropped: the clear line stands alone.
    assert "raise RunFailed" not in output and "ServerApp raised an exception" not in output, output[-3000:]


def test_run_local_refuses_a_bad_override_in_one_line(tmp_path: Path) -> None:
    """Checked before any Flower process starts: no traceback, the key named, exit non-zero."""
    cmd = ["bash", str(REPO / "scripts" / "run-local.sh"), "simulations/configs/default.yaml", "train.lrr=0.1"]
    proc = subprocess.run(cmd, env=flwr_env(tmp_path), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode != 0
    assert "confide:" in proc.stderr and "train.lrr" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _live_cmdline(pid: int) -> str:
    """The command line of a running (not zombie) process, else ""."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return "" if proc.status() == psutil.STATUS_ZOMBIE else " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _run_processes(home: Path) -> list[str]:
    """Command lines of the live processes under the SuperLinks of this Flower home, except the
    SuperLink's own executor (flower-superexec), which outlives every run."""
    live = [c for link in superlinks_under(home) for p in _descendants(link) if (c := _live_cmdline(p))]
    return [c for c in live if "flower-superexec" not in c]


def _logged_rounds(runs: Path) -> int:
    """Rounds in the first run folder's metrics.jsonl (round 0 is the initial evaluation); 0 before it exists."""
    logs = list(runs.glob("*/metrics.jsonl"))
    return len(logs[0].read_text().splitlines()) if logs else 0


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _ledger_entries(path: Path) -> list[dict]:
    return json.loads(path.read_text())["entries"]


def test_a_killed_run_resumes_from_its_checkpoint_with_the_sites_ledgers_continuing(tmp_path: Path) -> None:
    """`flwr run` (local SuperLink, simulation engine in its own process) is killed with SIGKILL
    during round 3 of 5, as a restarted machine would; the same command with `resume=<folder>`
    continues it: 5 rounds in metrics.jsonl with the structure of an uninterrupted run, the folder
    renamed complete, every site's ledger holding each round it trained (round 3 possibly twice: a
    site that finished it after the coordinator died spent that budget), and every site's
    reported epsilon equal to the composition of all its ledger entries, recomputed here with
    Opacus's RDP accountant directly (so the lost rounds were not forgotten)."""
    import psutil
    from opacus.accountants import RDPAccountant

    if port_in_use(LOCAL_CONTROL_PORT):
        pytest.skip("a local Flower SuperLink is already running on 127.0.0.1:39093; stop it to run this test")
    flwr = str(Path(sys.executable).parent / "flwr")
    config = (
        "data.num_sites=2 strategy.rounds=5 data.max_samples=300 model.name='resnet8' name='resumed' "
        "privacy.mode='local' privacy.noise_multiplier=1.0 faults.straggler_delay=3 train.lr=0.05"
    )
    base = [flwr, "run", str(REPO), "--stream", "--federation-config", "num-supernodes=2", "--run-config"]
    env, home = flwr_env(tmp_path), tmp_path / "flwr-home"
    runs = tmp_path / "runs"
    first = subprocess.Popen(base + [config], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # rounds 0, 1 and 2 logged: round 3 is under way
        wait_for("the first run to reach round 3", lambda: _logged_rounds(runs) >= 3, 300, 0.2)
        under = [psutil.Process(pid) for link in superlinks_under(home) for pid in _descendants(link)]
        (simulation,) = [p.pid for p in under if "flwr-simulation" in " ".join(p.cmdline())]
        _kill_all([simulation, *_descendants(simulation)])  # the coordinator's process and its Ray workers
        time.sleep(1)
        first.kill()  # `flwr run --stream` waits forever on a run whose process was killed
        first.communicate(timeout=30)
        (stopped,) = list(runs.glob("*.incomplete"))
        assert len(stopped.joinpath("metrics.jsonl").read_text().splitlines()) < 6
        resume = f"{config} resume='runs/{stopped.name}'"
        proc = subprocess.run(base + [resume], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    finally:
        first.kill()
        for pid in superlinks_under(home):
            _kill_all([*_descendants(pid), pid])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "[confide] resuming" in output
    done = stopped.with_name(stopped.name.removesuffix(".incomplete"))
    assert done.is_dir() and not list(runs.glob("*.incomplete"))
    lines = [json.loads(x) for x in (done / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1, 2, 3, 4, 5]
    assert all(set(x) == set(lines[1]) for x in lines[1:]) and set(lines[5]["sites"]) == {"site-0", "site-1"}
    job = done.name.rsplit("-", 1)[1]
    assert {x["run_id"] for x in lines[:3]} == {job} and len({x["run_id"] for x in lines[3:]}) == 1
    for site in ("site-0", "site-1"):
        # the state folder's ledger (the SuperLink's environment names it): it outlives the run folder
        entries = _ledger_entries(tmp_path / "confide-state" / "ledgers" / "builtin-digits" / f"{site}.json")
        trained = sorted(e["round"] for e in entries if e["kind"] == "dpsgd")
        assert trained in ([1, 2, 3, 4, 5], [1, 2, 3, 3, 4, 5]), trained
        accountant = RDPAccountant()
        for e in entries:
            for _ in range(e["steps"]):
                accountant.step(noise_multiplier=e["noise_multiplier"], sample_rate=e["sample_rate"])
        reported = lines[5]["privacy"]["sites"][site]
        assert reported["epsilon"] == pytest.approx(accountant.get_epsilon(reported["delta"]), rel=1e-6)


def test_flwr_stop_records_why_keeps_the_run_resumable_and_ends_its_processes(tmp_path: Path) -> None:
    """`flwr stop <run-id>` on a running job (local SuperLink, simulation engine in its own process):
    Flower raises SIGINT in the simulation process, Confide's exit handler (server/flower_runtime.py)
    writes the reason to FAILED.txt, the folder keeps its `.incomplete` name and checkpoint (resumable),
    Flower records the run stopped, and no process of the run is left under the SuperLink."""
    if port_in_use(LOCAL_CONTROL_PORT):
        pytest.skip("a local Flower SuperLink is already running on 127.0.0.1:39093; stop it to run this test")
    flwr = str(Path(sys.executable).parent / "flwr")
    config = (  # no baseline: its rounds (each one straggler_delay long) would come before the job's
        "data.num_sites=2 strategy.rounds=6 data.max_samples=300 model.name='resnet8' faults.straggler_delay=3 "
        "baseline.features='off'"
    )
    cmd = [flwr, "run", str(REPO), "--stream", "--federation-config", "num-supernodes=2", "--run-config", config]
    env, home, runs = flwr_env(tmp_path), tmp_path / "flwr-home", tmp_path / "runs"
    job = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # rounds 0 and 1 logged: round 2 is under way
        wait_for("the run to reach round 2", lambda: _logged_rounds(runs) >= 2, 300, 0.2)
        (folder,) = list(runs.glob("*.incomplete"))
        run_id = folder.name.removesuffix(".incomplete").rsplit("-", 1)[1]
        stop = subprocess.run([flwr, "stop", run_id], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert stop.returncode == 0, stop.stdout + stop.stderr
        wait_for("FAILED.txt after flwr stop", (folder / "FAILED.txt").exists, 60, 0.2)
        reason = (folder / "FAILED.txt").read_text()
        assert "stopped by signal SIGINT (Ctrl-C or `flwr stop`)" in reason and "resumable" in reason, reason
        with contextlib.suppress(AssertionError):  # the assertion below names what is left
            wait_for("the run's processes to end", lambda: not _run_processes(home), 30)
        assert not (left := _run_processes(home)), [c[:120] for c in left]
        assert (folder / "checkpoint.pt").exists() and len((folder / "metrics.jsonl").read_text().splitlines()) < 7
        listed = subprocess.run([flwr, "ls", "--run-id", run_id], env=env, cwd=tmp_path, capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert "stopped" in listed.stdout, listed.stdout
    finally:
        job.kill()
        job.communicate(timeout=30)
        for pid in superlinks_under(home):
            _kill_all([*_descendants(pid), pid])
