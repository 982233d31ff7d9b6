"""``confide report`` (simulations/study/report.py) refuses a folder that is not a readable sweep
output in one line before it writes anything (the contract in tests/one_line.py): a missing path,
a file, a folder without ``sweep.json``, a plan that is empty, not JSON, or lacks what the report
reads, and a finished cell whose result lacks its metrics. A cell still running (no result yet)
is not an error: the report lists it as missing (tests/test_report.py). A write that fails after
the checks is a failed run: one line, exit code 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from simulations.study.cellstore import PLAN, RESULT, cell_dir
from simulations.study.report import main
from tests.one_line import Case, directory, params, refused
from tests.test_report import make_sweep_folder

pytestmark = pytest.mark.unit


def sweep(change_plan: Callable[[dict], object] | None = None, plan_text: str | bytes | None = None,
          change_result: Callable[[dict], None] | None = None) -> Callable[[Path], None]:  # fmt: skip
    """A finished sweep folder (tests/test_report.py's) with its plan or first cell's result changed."""

    def write(out: Path) -> None:
        ids = make_sweep_folder(out)
        plan_path = out / PLAN
        if change_plan is not None:
            plan = json.loads(plan_path.read_text())
            plan_path.write_text(json.dumps(change_plan(plan)))
        if isinstance(plan_text, bytes):
            plan_path.write_bytes(plan_text)
        elif plan_text is not None:
            plan_path.write_text(plan_text)
        if change_result is not None:
            path = cell_dir(out, ids[0]) / RESULT
            result = json.loads(path.read_text())
            change_result(result)
            path.write_text(json.dumps(result))

    return write


def without(key: str) -> Callable[[dict], dict]:
    return lambda d: {k: v for k, v in d.items() if k != key}


def setting(key: str, value: object) -> Callable[[dict], dict]:
    return lambda d: {**d, key: value}


def plan_folder(out: Path) -> None:
    out.mkdir()
    (out / PLAN).mkdir()


S = ("s",)

# fmt: off
CASES = [
    Case("no-argument", (), ("required", "out")),
    Case("unknown-flag", ("s", "--pdf"), ("--pdf",), {"s": sweep()}),
    Case("two-folders", ("s", "t"), ("unrecognized", "t"), {"s": sweep()}),
    Case("folder-missing", ("nope",), ("sweep output folder not found", "nope")),
    Case("folder-is-a-file", ("s.yaml",), ("s.yaml", "is a file"), {"s.yaml": "grid: {}\n"}),
    Case("folder-without-plan", S, ("s is not a sweep output folder", "sweep.json"), {"s": directory}),
    Case("plan-is-a-folder", S, ("s/sweep.json", "folder"), {"s": plan_folder}),
    Case("plan-empty", S, ("s/sweep.json", "empty"), {"s": sweep(plan_text="")}),
    Case("plan-not-json", S, ("s/sweep.json", "not JSON"), {"s": sweep(plan_text="{'name': 'x'}")}),
    Case("plan-yaml", S, ("s/sweep.json", "not JSON"), {"s": sweep(plan_text="name: x\ncells: []\n")}),
    Case("plan-binary", S, ("s/sweep.json",), {"s": sweep(plan_text=b"\xff\xfe\x00\x00")}),
    Case("plan-a-list", S, ("s/sweep.json", "list", "not a sweep plan"), {"s": sweep(plan_text="[1, 2]")}),
    Case("plan-without-cells", S, ("s/sweep.json", "'cells' is missing", "a list"), {"s": sweep(without("cells"))}),
    Case("plan-cells-an-object", S, ("s/sweep.json", "'cells' is a dict", "a list"),
         {"s": sweep(setting("cells", {"c00": {}}))}),
    Case("plan-cell-without-id", S, ("s/sweep.json", "cell 0", "'id'"), {"s": sweep(setting("cells", [{"axes": {}}]))}),
    Case("plan-name-a-number", S, ("s/sweep.json", "'name' is a int", "a string"), {"s": sweep(setting("name", 3))}),
    Case("plan-grid-a-list", S, ("s/sweep.json", "'grid' is a list", "an object"), {"s": sweep(setting("grid", [1]))}),
    Case("result-without-metrics", S, ("s/cells/c00/result.json", "'metrics' is missing", "rerun"),
         {"s": sweep(change_result=lambda r: r.pop("metrics"))}),
    Case("result-axes-a-list", S, ("s/cells/c00/result.json", "'axes' is a list"),
         {"s": sweep(change_result=lambda r: r.update(axes=[1]))}),
]
# fmt: on


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input_is_refused_in_one_line_before_anything_is_written(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(main, case, tmp_path, monkeypatch, capsys)
    assert not list(tmp_path.rglob("report.html")) and not list(tmp_path.rglob("results.csv"))


def test_a_write_that_fails_after_the_checks_is_a_failed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder named report.html in the way: exit code 1 and one line naming it, no traceback."""
    out = tmp_path / "s"
    make_sweep_folder(out)
    (out / "report.html").mkdir()
    assert main([str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("confide: ") and "report.html" in err and "Traceback" not in err
