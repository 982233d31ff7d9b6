"""A party's privacy ledger: every DP mechanism it ran, on its own disk, reserve-then-commit.

One JSON file per party (a site, or the coordinator for site-level DP): ``{"entries": [...]}``,
each entry a dict with at least ``noise_multiplier``, ``sample_rate``, ``steps`` (Opacus's
history format) and ``status`` (``reserved`` or ``committed``; absent in ledgers written before
reservations existed, which counts as committed). Epsilon is always computed from *all* entries,
reserved ones included: a process that crashes after reserving has spent it.

Concurrency and crashes:
- every read-modify-write holds an exclusive lock (``filelock``: ``flock`` on POSIX) on
  ``<ledger>.lock`` (a stable file: the ledger itself is replaced on every write), and re-reads the
  ledger inside the lock, so two runs on one site never work from a stale copy and the cap check
  cannot race;
- writes go to a unique temporary file in the same folder, are fsynced, renamed over the ledger,
  and the folder is fsynced: a crash leaves the old or the new ledger, never half of one. A temp
  file left by a writer killed mid-write is removed by the next writer (only lock holders write);
- a refused check writes nothing; every entry is validated on read and before any write, so a
  ledger this module wrote can always be read back. The ledger keeps its file mode across writes
  (a new one gets the lock file's, i.e. the umask's).
"""

from __future__ import annotations

import json
import math
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

from common import atomic
from common.errors import ConfideError
from common.privacy.mechanism.accounting import HistoryEntry

RESERVED, COMMITTED = "reserved", "committed"


def history_of(entries: list[dict[str, Any]]) -> list[HistoryEntry]:
    return [(float(e["noise_multiplier"]), float(e["sample_rate"]), int(e["steps"])) for e in entries]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _entry_problem(e: object) -> str | None:
    """Why ``e`` is not a usable ledger entry, or None."""
    if not isinstance(e, dict):
        return f"not an object but {type(e).__name__}"
    missing = [k for k in ("noise_multiplier", "sample_rate", "steps") if k not in e]
    if missing:
        return f"missing {', '.join(missing)}"
    sigma, q, steps = e["noise_multiplier"], e["sample_rate"], e["steps"]
    if not _number(sigma) or sigma < 0:
        return f"noise_multiplier {sigma!r} is not a finite number >= 0"
    if not _number(q) or not 0 < q <= 1:
        return f"sample_rate {q!r} is not in (0, 1]"
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        return f"steps {steps!r} is not an integer >= 0"
    if e.get("status", COMMITTED) not in (RESERVED, COMMITTED):
        return f"status {e['status']!r} is neither {RESERVED!r} nor {COMMITTED!r}"
    return None


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: list[dict[str, Any]] = []  # as of the last read or write by this object

    @staticmethod
    def open(path: Path) -> Ledger:
        ledger = Ledger(path)
        ledger.entries = ledger._read()
        return ledger

    def history(self, select: Callable[[dict[str, Any]], bool] | None = None) -> list[HistoryEntry]:
        return history_of([e for e in self.entries if select is None or select(e)])

    def reserve(
        self, planned: list[dict[str, Any]], check: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None]
    ) -> str:
        """Atomically: re-read, call ``check(entries already there, planned)`` (it raises to refuse;
        then nothing is written), then record ``planned`` as reserved. Returns the reservation id."""
        if not planned:
            raise ValueError(f"privacy ledger {self.path}: nothing to reserve")
        rid = uuid.uuid4().hex
        now = time.time()
        new = [{**e, "status": RESERVED, "reservation": rid, "time": now} for e in planned]
        self._validate(new)
        with self._locked():
            entries = self._read()
            check(entries, new)
            self._write(entries + new)
        return rid

    def commit(self, reservation: str, actual: list[dict[str, Any]]) -> None:
        """Replace a reservation by what was actually spent (Opacus's recorded history), in place.
        A reservation can be committed once; an unknown or already committed one raises."""
        now = time.time()
        done = [{**e, "status": COMMITTED, "reservation": reservation, "time": now} for e in actual]
        self._validate(done)
        with self._locked():
            entries = self._read()
            mine = {i for i, e in enumerate(entries) if e.get("reservation") == reservation}
            if not mine:
                raise ConfideError(f"privacy ledger {self.path}: reservation {reservation} not found; not committing")
            if any(entries[i].get("status") != RESERVED for i in mine):
                raise ConfideError(
                    f"privacy ledger {self.path}: reservation {reservation} is already committed; not committing twice"
                )
            kept = [e for i, e in enumerate(entries) if i not in mine]
            at = min(mine)  # the entries before the reservation's first one are all kept
            self._write(kept[:at] + done + kept[at:])

    # -- file I/O ---------------------------------------------------------------------------

    @property
    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A lock object per hold: its flock on a descriptor of its own excludes this process's other
        # threads as well as other processes. The lock file stays (no unlink race on release), and a
        # filesystem without flock is an error, not a silent marker-file lock a crash could strand.
        with filelock.FileLock(self._lock_path, preserve_lock_file=True, fallback_to_soft=False):
            yield

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
            if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
                raise ValueError('not an object with an "entries" list')
            entries: list[dict[str, Any]] = data["entries"]
            for i, e in enumerate(entries):
                if problem := _entry_problem(e):
                    raise ValueError(f"entry {i}: {problem}")
        except FileNotFoundError:
            entries = []
        except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
            raise ConfideError(
                f"privacy ledger {self.path} is unreadable ({exc}); refusing to train "
                "without knowing what this party has already spent"
            ) from None
        self.entries = entries
        return entries

    def _validate(self, entries: list[dict[str, Any]]) -> None:
        for i, e in enumerate(entries):
            if problem := _entry_problem(e):
                raise ValueError(f"privacy ledger {self.path}: refusing to record entry {i}: {problem}")

    def _write(self, entries: list[dict[str, Any]]) -> None:
        """Replace the ledger by ``entries``; the caller holds the lock."""
        text = json.dumps({"entries": entries}, indent=1, allow_nan=False)  # fails before any file exists
        for stale in atomic.stale_temps(self.path):  # left by a writer killed mid-write
            stale.unlink(missing_ok=True)
        try:
            mode = stat.S_IMODE(self.path.stat().st_mode)
        except FileNotFoundError:
            mode = stat.S_IMODE(self._lock_path.stat().st_mode)
        atomic.write_text(self.path, text, mode)
        self.entries = entries
