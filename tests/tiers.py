"""The three test tiers and what keeps the quick one honest.

- ``unit``: no process is started, no Ray, no network connection, no training beyond a few steps;
  the whole tier runs in minutes (``python -m pytest -q -m unit``).
- ``sim``: in process but heavy: Flower's simulation engine on Ray (one Ray head for the whole
  session, tests/ray_head.py, whose actors one simulation hands to the next: tests/warm_actors.py),
  or training for real.
- ``system``: real processes: SuperLink/SuperNode, ``flwr``/``confide`` CLIs, containers, browsers.

A module declares its tier with ``pytestmark``; a module mixing tiers marks each test instead. A
test must carry exactly one tier. In the unit tier the calls that would break its promise raise
``HeavyCall`` naming the test, and a unit test that uses more than ``UNIT_LIMIT_S`` seconds of
CPU time (this process's, all threads) fails.
"""

from __future__ import annotations

import multiprocessing.util
import os
import platform
import socket
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

UNIT, SIM, SYSTEM = "unit", "sim", "system"
TIERS = (UNIT, SIM, SYSTEM)
LIMIT_ENV = "CONFIDE_UNIT_LIMIT_S"
# CPU seconds, not wall time, so a machine shared with other jobs does not fail a test. Most unit
# tests use well under a second; one near this limit trains for real, which is the sim tier's job.
UNIT_LIMIT_S = 60.0
LOOPBACK = ("127.", "::1", "localhost")


class HeavyCall(RuntimeError):
    """A unit-tier test called something that belongs to the sim or system tier."""


def tiers_of(item: pytest.Item) -> list[str]:
    return sorted({m.name for m in item.iter_markers() if m.name in TIERS})


def tier_of(item: pytest.Item) -> str | None:
    found = tiers_of(item)
    return found[0] if len(found) == 1 else None


def check_markers(items: list[pytest.Item]) -> None:
    """Two tier markers on one test (say ``unit`` from its module and ``sim`` on the test) would
    put it in both ``-m unit`` and ``-m sim``: refuse the collection, naming the test."""
    clashes = [f"{item.nodeid} ({' and '.join(tiers_of(item))})" for item in items if len(tiers_of(item)) > 1]
    if clashes:
        raise pytest.UsageError(
            "each test takes one tier marker (unit, sim or system); these have more: "
            + "; ".join(clashes)
            + ". Mark the tests of a mixed module one by one instead of with pytestmark."
        )


def forbid_heavy_calls(monkeypatch: pytest.MonkeyPatch, nodeid: str) -> None:
    """Make process creation, ray.init and non-loopback connections raise HeavyCall for this test."""

    def refuse(what: str) -> Callable[..., Any]:
        def call(*args: object, **kwargs: object) -> Any:
            raise HeavyCall(
                f"{nodeid} is in the unit tier but calls {what}: mark it sim or system "
                "(tests/tiers.py), or keep it in-process"
            )

        return call

    # platform.processor() runs `uname -p` once per process, then answers from its cache; benchmark
    # code records it. Asked before the guard, so recording the machine starts no process in a test.
    platform.processor()
    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse("subprocess"))
    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", refuse("a multiprocessing process"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse(f"os.{name}"))
    ray = sys.modules.get("ray")  # not imported here: that alone takes seconds; unimported, Ray's
    if ray is not None:  # start would still meet the process guard
        monkeypatch.setattr(ray, "init", refuse("ray.init"))
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def remote(sock: socket.socket, address: Any) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False  # Unix sockets stay on this machine
        return not str(address[0]).startswith(LOOPBACK)

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        if remote(sock, address):
            refuse(f"a network connection to {address!r}")()
        connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        if remote(sock, address):
            refuse(f"a network connection to {address!r}")()
        return connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)


def unit_limit_s() -> float:
    value = os.environ.get(LIMIT_ENV, "")
    try:
        return float(value) if value else UNIT_LIMIT_S
    except ValueError:
        raise pytest.UsageError(f"{LIMIT_ENV}={value!r} is not a number of seconds") from None


def check_duration(nodeid: str, elapsed: float, limit: float) -> None:
    if elapsed > limit:
        pytest.fail(
            f"{nodeid} is in the unit tier but used {elapsed:.1f} s of CPU (limit {limit:g} s, {LIMIT_ENV}): "
            "make it smaller or mark it sim or system"
        )


_times: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])


def record(report: pytest.TestReport) -> None:
    """Count a test and add its phases' time to its tier (the report carries its marker names)."""
    found = [t for t in TIERS if t in report.keywords]
    entry = _times[found[0] if len(found) == 1 else "untiered"]
    if report.when == "call":
        entry[0] += 1
    entry[1] += report.duration


def summarize(reporter: Any) -> None:
    """One line per tier: how many tests ran and their summed time (setup, call and teardown)."""
    if not _times:
        return
    parts = [f"{name} {int(n)} tests {secs:.0f} s" for name, (n, secs) in sorted(_times.items())]
    reporter.write_line("tiers run: " + " | ".join(parts))
