"""The privacy ledger under real concurrency and crashes, with real OS processes (spawn) on one file.

What these tests prove: concurrent reserve/commit cycles from two processes lose nothing and leave no
reservation or temp file behind, and a lock-free reader never sees a half-written ledger; two
processes racing for the last slot under a cap get exactly one success; a process killed after
reserving has spent what it reserved; a refused check (or an invalid entry) writes nothing; every
kind of corrupt or invalid ledger is refused with the file named; a reservation is committed once,
and committing it touches no other process's reservation; a failed or killed write leaves no temp
file; the ledger keeps its file mode across writes.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfideError, PolicyRefused
from common.privacy.governance.ledger import COMMITTED, RESERVED, Ledger

SPAWN = mp.get_context("spawn")
CYCLES = 40  # reserve+commit cycles per process in the concurrency test
REFUSED = 3  # exit code of a child whose reservation the check refused


def _entry(steps: int = 10, **tags: Any) -> dict[str, Any]:
    return {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": steps, **tags}


def _allow(existing: list[dict[str, Any]], planned: list[dict[str, Any]]) -> None:
    pass


def _refuse(existing: list[dict[str, Any]], planned: list[dict[str, Any]]) -> None:
    raise PolicyRefused("cap reached")


def _one_more_at_most(existing: list[dict[str, Any]], planned: list[dict[str, Any]]) -> None:
    """A cap that allows one entry in all; slow, so that without the lock both racers would pass it."""
    time.sleep(0.3)
    if existing:
        raise PolicyRefused("cap reached")


def _files(folder: Path) -> set[str]:
    return set(os.listdir(folder))


# -- children (module level: the spawn context imports them by name) --------------------------


def _cycles(path: str, worker: int, start: Any) -> None:
    start.wait()
    for i in range(CYCLES):
        rid = Ledger(Path(path)).reserve([_entry(i, worker=worker, i=i)], _allow)
        Ledger(Path(path)).commit(rid, [_entry(i, worker=worker, i=i, actual=True)])


def _race_for_last_slot(path: str, start: Any) -> None:
    start.wait()
    try:
        Ledger(Path(path)).reserve([_entry(1)], _one_more_at_most)
    except PolicyRefused:
        sys.exit(REFUSED)


def _reserve_then_die(path: str, steps: int) -> None:
    Ledger(Path(path)).reserve([_entry(steps, who="dead"), _entry(steps + 1, who="dead")], _allow)
    os._exit(1)  # no commit, no cleanup: as if killed


def _run(target: Any, *args: Any) -> list[Any]:
    procs = [SPAWN.Process(target=target, args=a) for a in args]
    for p in procs:
        p.start()
    return procs


def _join(procs: list[Any]) -> list[int | None]:
    for p in procs:
        p.join(60)
    return [p.exitcode for p in procs]


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.system  # real processes
def test_two_processes_reserve_and_commit_concurrently_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    start = SPAWN.Barrier(2)
    procs = _run(_cycles, (str(path), 0, start), (str(path), 1, start))
    reads = 0
    while any(p.is_alive() for p in procs):  # a lock-free reader must never see a half-written file
        if path.exists():
            Ledger.open(path)
            reads += 1
    assert _join(procs) == [0, 0]
    entries = Ledger.open(path).entries
    assert len(entries) == 2 * CYCLES
    assert all(e["status"] == COMMITTED and e["actual"] for e in entries)
    assert sorted((e["worker"], e["i"]) for e in entries) == [(w, i) for w in (0, 1) for i in range(CYCLES)]
    assert _files(tmp_path) == {"ledger.json", "ledger.json.lock"}  # no temp file left
    assert reads > 0


@pytest.mark.system  # real processes
def test_cap_race_lets_exactly_one_process_reserve(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    start = SPAWN.Barrier(2)
    codes = _join(_run(_race_for_last_slot, (str(path), start), (str(path), start)))
    assert sorted(codes) == [0, REFUSED]
    entries = Ledger.open(path).entries
    assert len(entries) == 1 and entries[0]["status"] == RESERVED


@pytest.mark.system  # real processes
def test_crash_after_reserving_counts_as_spent(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    assert _join(_run(_reserve_then_die, (str(path), 7))) == [1]
    ledger = Ledger.open(path)
    assert [e["status"] for e in ledger.entries] == [RESERVED, RESERVED]
    assert ledger.history() == [(1.0, 0.1, 7), (1.0, 0.1, 8)]
    seen: list[list[dict[str, Any]]] = []
    ledger.reserve([_entry(1)], lambda existing, planned: seen.append(existing))
    assert [e["steps"] for e in seen[0]] == [7, 8]  # the next cap check sees the dead process's spend


@pytest.mark.unit
def test_refusal_writes_nothing(tmp_path: Path) -> None:
    absent = tmp_path / "absent.json"
    with pytest.raises(PolicyRefused, match="cap reached"):
        Ledger(absent).reserve([_entry()], _refuse)
    assert not absent.exists()

    path = tmp_path / "ledger.json"
    Ledger(path).reserve([_entry()], _allow)
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    ledger = Ledger.open(path)
    with pytest.raises(PolicyRefused):
        ledger.reserve([_entry(), _entry()], _refuse)
    with pytest.raises(ValueError, match="noise_multiplier"):  # an invalid planned entry: refused before the check
        ledger.reserve([_entry(noise_multiplier=math.nan)], _allow)
    with pytest.raises(ValueError, match="nothing to reserve"):
        ledger.reserve([], _allow)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert len(ledger.entries) == 1
    assert _files(tmp_path) == {"absent.json.lock", "ledger.json", "ledger.json.lock"}


def _doc(entries: Any) -> str:
    return json.dumps({"entries": entries})


GOOD = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10, "status": "committed"}
CORRUPT = {
    "not json": "{entries: [",
    "empty file": "",
    "truncated": _doc([GOOD])[:-5],
    "top level list": json.dumps([GOOD]),
    "no entries key": json.dumps({"entry": [GOOD]}),
    "entries not a list": json.dumps({"entries": {"0": GOOD}}),
    "entries null": json.dumps({"entries": None}),
    "entry not a dict": _doc([GOOD, 3]),
    "entry as key-value pairs": _doc([list(GOOD.items())]),
    "missing steps": _doc([{k: v for k, v in GOOD.items() if k != "steps"}]),
    "negative noise": _doc([{**GOOD, "noise_multiplier": -1.0}]),
    "NaN noise": _doc([GOOD]).replace("1.0", "NaN"),
    "infinite noise": _doc([GOOD]).replace("1.0", "Infinity"),
    "noise as string": _doc([{**GOOD, "noise_multiplier": "1.0"}]),
    "noise as bool": _doc([{**GOOD, "noise_multiplier": True}]),
    "sample rate 0": _doc([{**GOOD, "sample_rate": 0}]),
    "sample rate above 1": _doc([{**GOOD, "sample_rate": 1.5}]),
    "negative sample rate": _doc([{**GOOD, "sample_rate": -0.1}]),
    "fractional steps": _doc([{**GOOD, "steps": 2.5}]),
    "negative steps": _doc([{**GOOD, "steps": -1}]),
    "steps as string": _doc([{**GOOD, "steps": "10"}]),
    "unknown status": _doc([{**GOOD, "status": "maybe"}]),
    "NaN in a tag": _doc([{**GOOD, "delta": 1e-5}]).replace("1e-05", "NaN"),
}


@pytest.mark.parametrize("text", list(CORRUPT.values()), ids=list(CORRUPT))
@pytest.mark.unit
def test_corrupt_ledger_is_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "site-a.json"
    path.write_text(text)
    with pytest.raises(ConfideError, match="unreadable") as info:
        Ledger.open(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfideError, match="unreadable"):  # and nothing is written over it
        Ledger(path).reserve([_entry()], _allow)
    assert path.read_text() == text


@pytest.mark.unit
def test_undecodable_or_unreadable_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site-a.json"
    path.write_bytes(b'{"entries": ["\xff"]}')
    with pytest.raises(ConfideError, match="unreadable") as info:
        Ledger.open(path)
    assert str(path) in str(info.value)
    path.unlink()
    path.mkdir()  # a folder where the file should be
    with pytest.raises(ConfideError, match="unreadable"):
        Ledger.open(path)


@pytest.mark.unit
def test_valid_ledgers_are_read(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    legacy = {"noise_multiplier": 0.0, "sample_rate": 1, "steps": 0}  # no status: written before reservations
    path.write_text(_doc([GOOD, legacy]))
    assert Ledger.open(path).history() == [(1.0, 0.1, 10), (0.0, 1.0, 0)]
    assert Ledger.open(tmp_path / "missing.json").entries == []


@pytest.mark.unit
def test_commit_of_unknown_or_committed_reservation_fails(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = Ledger(path)
    rid = ledger.reserve([_entry()], _allow)
    with pytest.raises(ConfideError, match="not found") as info:
        ledger.commit("no-such-reservation", [_entry()])
    assert str(path) in str(info.value)
    ledger.commit(rid, [_entry(12)])
    before = path.read_bytes()
    with pytest.raises(ConfideError, match="already committed"):
        ledger.commit(rid, [_entry(99)])
    assert path.read_bytes() == before
    assert Ledger.open(path).history() == [(1.0, 0.1, 12)]
    with pytest.raises(ValueError, match="sample_rate"):  # an invalid actual entry is refused, not written
        ledger.commit(ledger.reserve([_entry()], _allow), [_entry(sample_rate=2.0)])


@pytest.mark.system  # real processes
def test_commit_replaces_only_its_own_reservation(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = Ledger(path)
    ledger.commit(ledger.reserve([_entry(1, who="first")], _allow), [_entry(1, who="first")])
    assert _join(_run(_reserve_then_die, (str(path), 7))) == [1]  # another process's reservation, never committed
    mine = ledger.reserve([_entry(3, who="me")], _allow)
    theirs = {e["reservation"] for e in Ledger.open(path).entries if e.get("who") == "dead"}
    assert len(theirs) == 1

    ledger.commit(mine, [_entry(4, who="me"), _entry(5, who="me")])
    entries = Ledger.open(path).entries
    assert [(e["who"], e["steps"], e["status"]) for e in entries] == [
        ("first", 1, COMMITTED),
        ("dead", 7, RESERVED),
        ("dead", 8, RESERVED),
        ("me", 4, COMMITTED),
        ("me", 5, COMMITTED),
    ]
    assert {e["reservation"] for e in entries if e["who"] == "dead"} == theirs

    ledger.commit(theirs.pop(), [_entry(6, who="dead")])  # in place: the order of the ledger is kept
    assert [(e["who"], e["steps"]) for e in Ledger.open(path).entries] == [
        ("first", 1),
        ("dead", 6),
        ("me", 4),
        ("me", 5),
    ]


@pytest.mark.unit
def test_failed_or_killed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.json"
    ledger = Ledger(path)
    ledger.reserve([_entry()], _allow)
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        ledger.reserve([_entry()], _allow)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _files(tmp_path) == {"ledger.json", "ledger.json.lock"}

    killed = tmp_path / ".ledger.json.k1ll3d_x.tmp"  # what a writer killed between mkstemp and rename leaves
    other = tmp_path / ".ledger.json.b.json.k1ll3d_x.tmp"  # the temp file of another ledger, "ledger.json.b.json"
    killed.write_text("{")
    other.write_text("{")
    ledger.reserve([_entry()], _allow)
    assert _files(tmp_path) == {"ledger.json", "ledger.json.lock", other.name}


@pytest.mark.parametrize("mode", [0o640, 0o600])
@pytest.mark.unit
def test_writes_keep_the_file_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "ledger.json"
    ledger = Ledger(path)
    ledger.reserve([_entry()], _allow)
    lock_mode = stat.S_IMODE((tmp_path / "ledger.json.lock").stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == lock_mode  # a new ledger: the umask's mode, like any new file
    path.chmod(mode)
    ledger.commit(ledger.reserve([_entry()], _allow), [_entry()])
    assert stat.S_IMODE(path.stat().st_mode) == mode
