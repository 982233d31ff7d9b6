"""The terminal: Confide's lines by default, the libraries' lines back with the verbose switch
(common/logs.py; Flower's console: server/flower_runtime.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.common.logger import console_handler

from common import logs
from server import flower_runtime

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.num_sites=2", "strategy.min_sites=2", "data.max_samples=400", "train.batch_size=32"]
PER_ROUND = 8  # "[ROUND i/n]", the round line, and each site's first lines in a fresh worker (2 x 2)
HEADER = 6  # label set (preflight and ServerApp), model, strategy, round 0, slack for one Ray line
SUMMARY = 11  # blank, title, header, 3 rounds, privacy, run folder, exported model, "run folder:"


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
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    return output


@pytest.mark.system
@pytest.mark.slow
def test_a_default_run_prints_a_few_lines_per_round_plus_the_summary(tmp_path: Path) -> None:
    output = simulate(tmp_path, 2)
    lines = output.strip().splitlines()  # a worker's lines may reach the terminal after the summary
    assert len(lines) <= HEADER + 2 * PER_ROUND + SUMMARY + 2, output
    for noise in ("configure_train", "Since flwr", "FutureWarning", "DEPRECATED FEATURE", "warnings.warn"):
        assert noise not in output, output
    assert "[confide] round 2 |" in output and "[confide] run folder:" in output


@pytest.mark.system
@pytest.mark.slow
def test_verbose_brings_flowers_lines_back(tmp_path: Path) -> None:
    output = simulate(tmp_path, 1, "--verbose")
    assert "configure_train: Sampled 2 nodes" in output
    assert "DEPRECATED FEATURE" in output
