"""simulations/processes.py: what a run or a sweep started is gone when it ends.

What this proves: a process that hands its children to the detached reaper and then leaves at
once with ``os._exit(130)`` (a sweep's forced exit after Ctrl-C) exits with 130, not with a code
something else chose, and its child process is stopped shortly after; the reaper does nothing
when there is no child. With the reaper call removed, the child outlives its parent and the test
fails.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.system

LEAVES = """
import os, subprocess, sys
from simulations.processes import reap_after_exit
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], **quiet)
print(child.pid, flush=True)
reap_after_exit(delay=0.2)
os._exit(130)
"""


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def test_a_forced_exit_keeps_its_code_and_its_children_are_stopped() -> None:
    done = subprocess.run([sys.executable, "-c", LEAVES], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    child = int(done.stdout.split()[0])
    try:
        assert _gone(child, within=10), "the child outlived its parent's forced exit"
    finally:
        if not _gone(child, within=0):
            psutil.Process(child).kill()


def test_no_child_no_reaper() -> None:
    script = "from simulations.processes import reap_after_exit; reap_after_exit(); print('ok')"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_block_ends_what_it_started_except_what_it_spares_and_their_children() -> None:
    """``reaped`` with ``spare`` (a simulation's kept actors): the spared process and its own child
    survive the block, the other process started in it is stopped. Without ``spare`` honoured,
    the spared pair is stopped too and the test fails."""
    from simulations.processes import reaped

    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    parent = [sys.executable, "-c", f"import subprocess, time; subprocess.Popen({sleep!r}); time.sleep(120)"]
    started: list[subprocess.Popen] = []
    try:
        with reaped(shutdown_ray=False, spare=lambda: {started[0].pid}):
            started += [subprocess.Popen(parent), subprocess.Popen(sleep)]
            deadline = time.monotonic() + 30
            while not psutil.Process(started[0].pid).children() and time.monotonic() < deadline:
                time.sleep(0.1)
        assert started[1].poll() is not None, "a process the block started outlived it"
        assert started[0].poll() is None, "the spared process was stopped"
        children = psutil.Process(started[0].pid).children()
        assert len(children) == 1 and children[0].is_running(), "the spared process's child was stopped"
    finally:
        for p in started:
            if p.poll() is None:
                for c in psutil.Process(p.pid).children(recursive=True):
                    c.kill()
                p.kill()
            p.wait(timeout=10)
