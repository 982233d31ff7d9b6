"""``confide submit`` (simulations/submit.py) refuses arguments it can tell are wrong in one line
before anything is submitted (the contract in tests/one_line.py): --wait (a number of seconds,
>= 0, finite), options flwr run does not have, an option without its value, the app folder
(missing, a file, not a Flower app), too many positional arguments and a --run-config TOML file
that is not there. ``stream`` (which would start ``flwr run``) fails the test if it is reached.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations import submit
from tests.one_line import Case, directory, params, refused

pytestmark = pytest.mark.unit

APP = {"app/pyproject.toml": "[project]\nname = 'x'\n"}
RC = ("--run-config", "experiment='e.yaml'")

# fmt: off
CASES = [
    Case("no-arguments", (), ("app folder",)),
    Case("wait-without-seconds", ("app", "conn", "--wait"), ("--wait", "number of seconds"), APP),
    Case("wait-not-a-number", ("--wait", "soon", "app", "conn"), ("--wait 'soon'", ">= 0"), APP),
    Case("wait-negative", ("--wait", "-5", "app", "conn"), ("--wait -5", "0 <= seconds"), APP),
    Case("wait-nan", ("--wait=nan", "app", "conn"), ("--wait nan", "0 <= seconds"), APP),
    Case("wait-infinite", ("--wait", "inf", "app", "conn"), ("--wait inf", "finite"), APP),
    Case("unknown-option", ("app", "conn", "--runconfig", "a=1"), ("unknown option --runconfig", "--run-config"), APP),
    Case("unknown-short-option", ("app", "conn", "-x"), ("unknown option -x",), APP),
    Case("run-config-without-value", ("app", "conn", "--run-config"), ("--run-config needs a value",), APP),
    Case("run-config-followed-by-option", ("app", "conn", "-c", "--stream"), ("-c needs a value",), APP),
    Case("format-json", ("app", "conn", "--format", "json"), ("--format json", "default output"), APP),
    Case("run-config-toml-missing", ("app", "conn", "--run-config", "over.toml"),
         ("--run-config file not found", "over.toml"), APP),
    Case("only-options", RC, ("app folder",), APP),
    Case("too-many-positionals", ("app", "conn", "experiment='e.yaml'"), ("too many arguments", "experiment"), APP),
    Case("app-folder-missing", ("nope", "conn", *RC), ("app folder not found", "nope")),
    Case("app-folder-a-file", ("e.yaml", "conn", *RC), ("app folder e.yaml", "is a file"), {"e.yaml": "x: 1\n"}),
    Case("app-folder-not-a-flower-app", ("docs", "conn", *RC), ("app folder docs", "pyproject.toml"),
         {"docs": directory}),
]
# fmt: on


@pytest.mark.parametrize("case", params(CASES))
def test_bad_arguments_are_refused_in_one_line_before_submitting(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def submitted(cmd: list[str]) -> tuple[int, str]:
        raise AssertionError(f"{case.id}: submitted {cmd} instead of refusing")

    monkeypatch.setattr(submit, "stream", submitted)
    refused(submit.main, case, tmp_path, monkeypatch, capsys)


def test_good_arguments_reach_flwr_run_with_wait_taken_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--wait anywhere is confide submit's own option: flwr run gets the rest, plus --stream."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(tmp_path)
    seen: list[list[str]] = []

    def fake_stream(cmd: list[str]) -> tuple[int, str]:
        seen.append(cmd)
        return 1, "refused by the SuperLink\n"

    monkeypatch.setattr(submit, "stream", fake_stream)
    assert submit.main(["app", "conn", "--wait", "0", "--run-config", "a=1"]) == 2  # no run started
    assert seen and seen[0][1:] == ["run", "app", "conn", "--run-config", "a=1", "--stream"]
