"""Which process is writing an incomplete run folder (``owner.json``: pid, its start time, host).

A run stopped by a signal it can catch, or by an error, says why in FAILED.txt. A process killed
outright (SIGKILL, the out-of-memory killer, a machine stop) cannot; its folder keeps the
``.incomplete`` name and nothing else. The owner record lets the next look at the folder tell a
run still being written from one whose process is gone, on the same host (a process is the same
one only if its pid and start time both match: pids are reused). Another host's record is not
judged.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import psutil

from common import atomic

FILE = "owner.json"


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def claim(folder: Path) -> None:
    """Record this process as the folder's writer."""
    me = {"pid": os.getpid(), "started": _start_time(os.getpid()), "host": socket.gethostname()}
    atomic.write_text(folder / FILE, json.dumps(me) + "\n")


def release(folder: Path) -> None:
    (folder / FILE).unlink(missing_ok=True)


def _owner(folder: Path) -> dict | None:
    try:
        owner = json.loads((folder / FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _here(owner: dict | None) -> bool:
    """A record of this host (another host's pids mean nothing here)."""
    return owner is not None and owner.get("host") == socket.gethostname()


def _alive(owner: dict) -> bool:
    """The recorded process still runs: same pid and same start time (pids are reused), and not a
    zombie (a killed writer stays one until its parent, e.g. the SuperLink, reaps it: it writes no more)."""
    started = _start_time(owner["pid"])
    if started is None or started != owner.get("started"):
        return False
    try:
        return psutil.Process(owner["pid"]).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def alive_writer(folder: Path) -> int | None:
    """The pid of another live process on this host recorded as the folder's writer, else None."""
    owner = _owner(folder)
    if not _here(owner) or owner["pid"] == os.getpid():
        return None
    return owner["pid"] if _alive(owner) else None


def gone(folder: Path) -> str | None:
    """Why the folder stopped, when its writer on this host is gone without saying so; else None."""
    owner = _owner(folder)
    if not _here(owner) or owner["pid"] == os.getpid() or _alive(owner):
        return None
    return (
        f"the process writing this run (pid {owner['pid']}) ended without recording why: it was killed "
        "(SIGKILL, out of memory) or the machine stopped; the last checkpoint is intact, resume from it"
    )
