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

pytestmark = pytest.mark.slow

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


def test_flwr_run_local_simulation_with_override(tmp_path: Path) -> None:
    if port_in_use(LOCAL_CONTROL_PORT):
        pytest.skip("a local Flower SuperLink is already running on 127.0.0.1:39093; stop it to run this test")
    home = tmp_path / "flwr-home"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "CONFIDE_ROOT": str(tmp_path),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
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
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, cwd=tmp_path)
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

    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "[confide] run folder:" in output
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert run.name.split("-")[2:4] == ["cli", "run"] and not run.name.endswith(".incomplete")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1]
    assert set(lines[1]["sites"]) == {"site-0", "site-1"}
    assert not superlinks_under(home)
