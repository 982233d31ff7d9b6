"""The app bundle (FAB) that `flwr run` sends to the SuperLink and from it to every site, built
with Flower's own `flwr build` from pyproject.toml's fab-include: it holds the apps and the
experiment files, and none of the study tooling (sweeps, reports, the determinism switch that
seeds DP noise), tests, benchmarks or run outputs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.system


def test_the_bundle_carries_the_apps_and_no_study_tooling(tmp_path: Path) -> None:
    flwr = Path(sys.executable).parent / "flwr"
    proc = subprocess.run([str(flwr), "build", "--app", str(REPO)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (fab,) = tmp_path.glob("*.fab")
    names = set(zipfile.ZipFile(fab).namelist())
    needs = (
        "server/app.py",
        "client/app.py",
        "common/privacy/mechanism/randomness.py",
        "simulations/configs/default.yaml",
    )
    for needed in needs:
        assert needed in names, needed
    assert not [n for n in names if n.startswith("simulations/") and n.endswith(".py")], sorted(names)
    assert not [n for n in names if n.split("/")[0] in ("tests", "benchmarks", "docs", "runs", "docker")]
