"""A run stopped by a signal: say why in its folder and end the processes it started.

``flwr stop <run-id>`` makes the SuperLink refuse the run's next heartbeat, and Flower's
simulation process then raises SIGINT in itself; its signal handler runs Flower's exit handlers
and exits. ``kill`` sends SIGTERM, Ctrl-C SIGINT. Either way the coordinator's thread is cut off
mid-round, so the reason is written here, from the exit path (Flower's exit handlers call ``stop``:
server/flower_runtime.py): FAILED.txt in the run folder
(common/rundir.py), which keeps its ``.incomplete`` name and its last checkpoint (resumable).

The private Ray instance a simulation started is made of this process's child processes (GCS,
raylet, dashboard and runtime-env agents, workers). Flower's forced exit (after 5 s) can leave
some of them running; they are ended here, by process id, descendants of this process only.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from common.rundir import record_stop

_HOW = {
    signal.SIGINT: "Ctrl-C or `flwr stop`",
    signal.SIGTERM: "kill or a process manager",
}


def reason(signum: int | None) -> str:
    """The line FAILED.txt gets for a run stopped by ``signum`` (None: not known)."""
    if signum is None:
        return "stopped by signal (SIGINT or SIGTERM: Ctrl-C, `flwr stop` or kill); resumable from its last checkpoint"
    name = signal.Signals(signum).name
    how = _HOW.get(signal.Signals(signum), "a signal")
    return f"stopped by signal {name} ({how}); resumable from its last checkpoint"


def stop(signum: int | None, end_children: bool = True) -> list[Path]:
    """Record the stop in every run folder this process is writing and, if there was one,
    end this process's descendants (``end_children``); return the folders."""
    folders = record_stop(reason(signum))
    for folder in folders:
        print(f"[confide] {reason(signum)}: {folder}", file=sys.stderr, flush=True)
    if folders and end_children:
        end_descendants()
    return folders


def descendants(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Process ids of ``pid``'s descendants, read from ``proc`` (Linux; [] elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        fields = text.rsplit(")", 1)[-1].split()  # after "(comm)", which may hold spaces
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def end_descendants(grace: float = 3.0, proc: Path = Path("/proc")) -> None:
    """SIGTERM this process's descendants, then SIGKILL those still there after ``grace`` s."""
    pids = descendants(os.getpid(), proc)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any((proc / str(p)).exists() for p in pids):
        time.sleep(0.1)
    _signal_all([p for p in pids if (proc / str(p)).exists()], signal.SIGKILL)


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
