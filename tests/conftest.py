"""Shared fixtures: an isolated project root per test and the optional real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import config as config_mod

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Relative paths in configs (runs/, data files) resolve inside the test's tmp folder."""
    monkeypatch.setenv("CONFIDE_ROOT", str(tmp_path))
    return tmp_path


@pytest.fixture(autouse=True)
def simulation_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that runs a deployed site's ClientApp in this process locks study seeds out of it
    for good (common/privacy/randomness.py), as a real site's process is; each test starts as a
    simulation process again."""
    from common.privacy import randomness

    monkeypatch.setattr(randomness, "_FORBIDDEN", False)


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"real dataset not available: {path}")
    return path


def small_experiment(**overrides: object) -> config_mod.ExperimentConfig:
    """A fast digits/ResNet-18 experiment; overrides use dotted keys."""
    base = {
        "data.num_sites": 2,
        "strategy.min_sites": 2,
        "strategy.rounds": 2,
        "data.max_samples": 400,
        "train.batch_size": 32,
    }
    base.update({k: v for k, v in overrides.items()})
    return config_mod.load(None, base)


@pytest.fixture(autouse=True)
def no_open_run_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run folders this process is writing (common/rundir.py, which a stop signal marks): each
    test starts with none, whatever earlier tests left open."""
    from common import rundir

    monkeypatch.setattr(rundir, "_OPEN", set())
