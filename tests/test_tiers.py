"""The test tiers (tests/tiers.py): inside a unit-tier test, starting a process (subprocess,
os.fork, multiprocessing), ray.init and a connection off this machine raise HeavyCall naming the
test, while loopback connections still work; a unit test over the CPU-time limit fails; a test with
two tier markers stops the collection naming it; the summary line counts each tier's tests."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import ray  # imported before the test starts, as Flower's simulation modules import it

from tests import tiers

pytestmark = pytest.mark.unit


def test_processes_ray_and_remote_connections_are_refused_naming_the_test(request: pytest.FixtureRequest) -> None:
    me = request.node.nodeid
    with pytest.raises(tiers.HeavyCall, match=rf"^{me} is in the unit tier but calls subprocess"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with pytest.raises(tiers.HeavyCall, match="calls os.fork"):
        os.fork()
    with pytest.raises(tiers.HeavyCall, match="calls a multiprocessing process"):
        process = multiprocessing.get_context("spawn").Process(target=print)
        process.start()
    with pytest.raises(tiers.HeavyCall, match="calls ray.init"):
        ray.init()
    assert not ray.is_initialized()
    with socket.socket() as sock, pytest.raises(tiers.HeavyCall, match=r"network connection to \('192.0.2.1', 80\)"):
        sock.connect(("192.0.2.1", 80))  # TEST-NET-1: refused before any packet is sent


def test_loopback_connections_still_work() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
        with socket.socket() as client:
            assert client.connect_ex(server.getsockname()) == 0


def test_a_unit_test_over_the_limit_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    tiers.check_duration("tests/x.py::quick", 1.9, 2.0)  # under the limit: nothing
    with pytest.raises(pytest.fail.Exception, match=r"slow is in the unit tier but used 2\.1 s of CPU \(limit 2 s"):
        tiers.check_duration("tests/x.py::slow", 2.1, 2.0)
    monkeypatch.setenv(tiers.LIMIT_ENV, "45")
    assert tiers.unit_limit_s() == 45.0
    monkeypatch.setenv(tiers.LIMIT_ENV, "soon")
    with pytest.raises(pytest.UsageError, match="CONFIDE_UNIT_LIMIT_S='soon' is not a number"):
        tiers.unit_limit_s()


def fake_item(nodeid: str, *marks: str) -> SimpleNamespace:
    return SimpleNamespace(nodeid=nodeid, iter_markers=lambda: [SimpleNamespace(name=m) for m in marks])


def test_two_tier_markers_on_one_test_stop_the_collection_naming_it() -> None:
    items = [fake_item("a::one", "unit", "slow"), fake_item("a::two", "unit", "sim"), fake_item("b::three", "system")]
    assert [tiers.tier_of(i) for i in items] == ["unit", None, "system"]  # type: ignore[arg-type]
    with pytest.raises(pytest.UsageError, match=r"these have more: a::two \(sim and unit\)\. Mark"):
        tiers.check_markers(items)  # type: ignore[arg-type]
    tiers.check_markers([items[0], items[2]])  # type: ignore[list-item]


def test_the_summary_counts_each_tiers_tests_and_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiers, "_times", type(tiers._times)(tiers._times.default_factory))
    reports = [("unit", "setup", 0.5), ("unit", "call", 1.0), ("unit", "call", 2.0), ("sim", "call", 10.0)]
    reports += [("", "call", 4.0)]
    for tier, when, secs in reports:
        tiers.record(SimpleNamespace(keywords={tier: 1, "test_x.py": 1} if tier else {}, when=when, duration=secs))
    lines: list[str] = []
    tiers.summarize(SimpleNamespace(write_line=lines.append))
    assert lines == ["tiers run: sim 1 tests 10 s | unit 2 tests 4 s | untiered 1 tests 4 s"]
