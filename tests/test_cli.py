"""The `confide` command (simulations/cli.py): it dispatches to each subcommand's own module and
parser, refuses an unknown subcommand in one line, and is installed as a console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from simulations import cli


@pytest.mark.system
def test_the_installed_confide_script_lists_every_subcommand() -> None:
    script = Path(sys.executable).parent / "confide"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in ("run", "score", "sweep", "report", "audit-log", "check-ledger"):
        assert f"\n  {name} " in proc.stdout, name


@pytest.mark.unit
def test_confide_dispatches_to_the_module_with_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    """`confide run --help` is simulations.local's parser under the name `confide run`."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "--help"])
    assert stop.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: confide run") and "--resume" in usage and "--ray-address" in usage


@pytest.mark.unit
def test_an_unknown_subcommand_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'trian'" in err and "run" in err
