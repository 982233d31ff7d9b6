"""The terminal: Confide's lines by default, the libraries' lines back with the verbose switch
(common/logs.py; Flower's console: server/flower_runtime.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from flwr.common.logger import console_handler

from common import logs
from common.errors import RunFailed
from server import flower_runtime

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.num_sites=2", "strategy.min_sites=2", "data.max_samples=400", "train.batch_size=32"]
PER_ROUND = 8  # "[ROUND i/n]", the round line, and each site's first lines in a fresh worker (2 x 2)
HEADER = 6  # label set (preflight and ServerApp), model, strategy, round 0, slack for one Ray line
SUMMARY = 11  # blank, title, header, 3 rounds, privacy, run folder, exported model, "run folder:"
# The job's baseline (without DP): "baseline first", its rounds 0-2, each site's first lines for its
# layer (2 x 2) and up to 4 lines setting the model against it (the fourth says the baseline was
# exported in the model's place, or points to it where it wins on one data set); under DP (no
# share) the "no baseline" log line and the end's "Baseline: none" line, plus one of slack: which
# Ray worker logs a site's first lines in a round varies with scheduling.
BASELINE, NO_BASELINE = 1 + 3 + 2 * 2 + 4, 2 + 1


@pytest.fixture
def flower_console() -> Iterator[None]:
    level, filters = console_handler.level, list(console_handler.filters)
    with warnings.catch_warnings():
        yield
    console_handler.setLevel(level)
    console_handler.filters[:] = filters


def flower_record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("flwr", level, __file__, 1, message, None, None)


@pytest.mark.unit
def test_quiet_by_default_drops_flower_info_and_its_notices(flower_console, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    console_handler.setLevel(logging.INFO)
    flower_runtime.setup_logging()
    assert console_handler.level == logging.WARNING
    assert not console_handler.filter(flower_record("Since flwr 1.32, default simulated SuperNodes changed", 30))
    assert console_handler.filter(flower_record("a real Flower warning", logging.WARNING))
    assert not logging.getLogger("flwr").propagate  # no second copy through a root handler (Opacus adds one)
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("Tip: In future versions of Ray, Ray will ...", FutureWarning, stacklevel=1)
        warnings.warn("something Confide should show", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something Confide should show"]


@pytest.mark.unit
def test_quiet_drops_flowers_traceback_around_a_run_confide_ended(flower_console, monkeypatch) -> None:  # noqa: ANN001
    """Flower logs "ServerApp raised an exception" with the traceback of whatever the ServerApp
    raised; for a RunFailed (Confide already printed its one line) the record is dropped, while a
    real crash (any other exception) keeps its traceback."""
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    flower_runtime.setup_logging()

    def raised(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:  # noqa: BLE001
            info = sys.exc_info()
        return logging.LogRecord("flwr", logging.ERROR, __file__, 1, "%s raised an exception", ("ServerApp",), info)

    assert not console_handler.filter(raised(RunFailed("round 1: too few valid updates")))
    assert console_handler.filter(raised(ValueError("a bug")))


@pytest.mark.unit
@pytest.mark.parametrize("how", ["env", "flower"])
def test_verbose_keeps_everything(flower_console, monkeypatch, how: str) -> None:  # noqa: ANN001
    if how == "env":
        monkeypatch.setenv(logs.VERBOSE_ENV, "1")
        console_handler.setLevel(logging.INFO)
    else:  # flwr run --federation-config "verbose=true": Flower set its console to DEBUG
        monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
        console_handler.setLevel(logging.DEBUG)
    flower_runtime.setup_logging()
    assert console_handler.level <= logging.INFO
    assert console_handler.filter(flower_record("Since flwr 1.32, default simulated SuperNodes changed", 30))


def simulate(tmp_path: Path, rounds: int, *extra: str) -> str:
    sets = [f"--set={s}" for s in [*SMALL, f"strategy.rounds={rounds}"]]
    env = {**os.environ, "CONFIDE_ROOT": str(tmp_path), "PYTHONPATH": str(REPO)}
    env.pop(logs.VERBOSE_ENV, None)
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "simulations.local", str(REPO / "simulations/configs/default.yaml"), *sets, *extra]
    log_file = tmp_path / "run.log"
    with log_file.open("w") as out:  # a file, as a redirected terminal is
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        started = _watch_descendants(proc, timeout=600)
    output = log_file.read_text()
    assert proc.returncode == 0, output[-3000:]
    left = _still_running(started, grace=15)
    assert not left, f"processes the run started outlive it: {left}"
    return output


def _watch_descendants(proc: subprocess.Popen, timeout: float) -> dict[int, psutil.Process]:
    """Every process ``proc`` starts (Ray's raylet, agents, site workers), seen while it runs."""
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the run did not end within its time limit")
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
        time.sleep(0.5)
    return seen


def _still_running(procs: dict[int, psutil.Process], grace: float) -> list[str]:
    deadline = time.monotonic() + grace
    while True:
        alive = []
        for p in procs.values():
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(1)


# What a redirected terminal may hold: Confide's own lines (from the driver, or from a site's Ray
# worker behind Ray's plain "(ClientAppActor pid=N)" prefix), the summary table's rows, the final
# "run folder:" line, and blank lines. Anything else (a library's tip, warning or progress bar, a
# Ray or Flower notice) is noise a user has to learn to ignore.
OWN_LINE = re.compile(
    r"^(\(\w+ pid=\d+(, ip=[\d.]+)?\) )?\[confide\] "  # Confide's logger, in the driver or a site
    r"|^run folder: "
    r"|^round +central acc"  # the summary table's header ...
    r"|^ +\d+ +[\d.-]+ "  # ... and its rows
    r"|^$"
)

DP = ("--set=model.name=resnet8", "--set=privacy.mode=local", "--set=privacy.target_epsilon=8")


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), DP], ids=["no-dp", "local-dp"])
def test_a_redirected_run_prints_only_confides_lines(tmp_path: Path, extra: tuple[str, ...]) -> None:
    """Output captured as a file (not a terminal): every line is Confide's own, without colour
    codes, and a few per round plus the summary; and no process the run started outlives it."""
    output = simulate(tmp_path, 2, *extra)
    assert "\x1b[" not in output, "ANSI escape codes in a redirected log"
    strays = [line for line in output.splitlines() if not OWN_LINE.match(line)]
    assert not strays, "lines that are not Confide's:\n" + "\n".join(strays[:20])
    lines = output.strip().splitlines()  # a worker's lines may reach the terminal after the summary
    baseline = NO_BASELINE if extra else BASELINE
    assert len(lines) <= HEADER + 2 * PER_ROUND + SUMMARY + baseline + 2 + 4 * bool(extra), output
    assert "[confide] round 2 |" in output and "[confide] run folder:" in output


@pytest.mark.system
@pytest.mark.slow
def test_verbose_brings_flowers_lines_back(tmp_path: Path) -> None:
    output = simulate(tmp_path, 1, "--verbose")
    assert "configure_train: Sampled 2 nodes" in output
    assert "DEPRECATED FEATURE" in output
