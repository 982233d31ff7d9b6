"""Progress lines (common/progress.py, server/run.py's round line): a site's line within a long
round, at most once per interval and never for the last step, and the run's elapsed time and ETA
from its mean round, checked against values worked out by hand."""

from __future__ import annotations

import logging

import pytest

from common.progress import Progress, clock_text, describe
from server.run import timing

pytestmark = pytest.mark.unit


def test_a_line_at_most_once_per_interval_with_rate_and_time_left(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    progress = Progress(total_steps=10, interval=30.0, clock=lambda: now[0])
    lines = []
    with caplog.at_level(logging.INFO, logger="common.progress"):
        for _ in range(10):
            now[0] += 12.0  # 12 s per step of 32 records
            lines.append(progress.step(32))
    # due 30 s after the last line: steps 3 (36 s), 6 (72 s), 9 (108 s); step 10 is the end: no line
    assert [i + 1 for i, x in enumerate(lines) if x] == [3, 6, 9]
    # step 3: 96 records in 36 s = 2.7/s; 36 s / 3 steps * 7 left = 84 s
    assert lines[2] == "local training: step 3/10 (30%), 2.7 records/s, ~1m24s left"
    assert caplog.text.count("local training: step") == 3


def test_no_lines_when_switched_off() -> None:
    now = [0.0]
    progress = Progress(total_steps=5, interval=0.0, clock=lambda: now[0])
    for _ in range(4):
        now[0] += 100
        assert progress.step(1) is None


def test_clock_and_eta_texts() -> None:
    assert [clock_text(s) for s in (0, 59.4, 61, 3600 + 125)] == ["0s", "59s", "1m01s", "1h02m"]
    assert describe("x", 1, 4, 10, 5.0) == "x: step 1/4 (25%), 2.0 records/s, ~15s left"
    assert timing(90.0, 3, 2) == "elapsed 1m30s, ~1m00s left"  # 30 s a round, 2 rounds left
    assert timing(5.0, 0, 4) == "elapsed 5s" and timing(90.0, 3, 0) == "elapsed 1m30s"
