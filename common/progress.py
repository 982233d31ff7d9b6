"""Progress of a long local epoch, in the site's own log (never sent): steps done of the round's
total, records per second and the time left, at most once per ``train.progress_seconds``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Progress:
    def __init__(
        self, total_steps: int, interval: float, label: str = "local training",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.total, self.interval, self.label, self.clock = total_steps, interval, label, clock
        self.start = self.last = clock()
        self.steps = self.records = 0

    def step(self, records: int) -> str | None:
        """Count one optimizer step of ``records`` records; returns (and logs) a progress line
        when one is due."""
        self.steps += 1
        self.records += records
        now = self.clock()
        if not self.interval or now - self.last < self.interval or self.steps >= self.total:
            return None
        self.last = now
        line = describe(self.label, self.steps, self.total, self.records, now - self.start)
        log.info(line)
        return line


def describe(label: str, steps: int, total: int, records: int, elapsed: float) -> str:
    rate = records / elapsed if elapsed > 0 else 0.0
    left = elapsed / steps * (total - steps) if steps and total > steps else 0.0
    share = f" ({100 * steps / total:.0f}%)" if total else ""
    return f"{label}: step {steps}/{total}{share}, {rate:.1f} records/s, ~{clock_text(left)} left"


def clock_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
