"""``confide audit-log`` (client/audit_log.py) refuses a bad argument or log file in one line
before it prints anything (the contract in tests/one_line.py): a missing or folder path, a file
that is not text, not JSON lines, or lines that are not audit records (another kind of JSON, or
fields of the wrong type that the table would trip over). An empty log is a site that has sent
nothing, said in plain words; a legitimate non-finite epsilon (written as "nan") prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.audit_log import main
from tests.one_line import Case, directory, params, refused

pytestmark = pytest.mark.unit

RECORD = {"v": 1, "time": "2026-01-01T00:00:00.000Z", "run": 7, "job": "j", "round": 1, "type": "train",
          "site": "north", "request": "r1", "outcome": "sent", "tensors": [], "bytes": 0, "sha256": None,
          "metrics": {"loss": 0.5}, "configs": {}, "epsilon": 1.25, "error": None}  # fmt: skip


def log(*records: dict | str) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def bad(**fields: object) -> dict[str, str]:
    return {"a.audit.jsonl": log(RECORD, {**RECORD, **fields})}


SHOW = ("show", "a.audit.jsonl")

# fmt: off
CASES = [
    Case("no-subcommand", (), ("required", "subcommand")),
    Case("unknown-subcommand", ("list", "a.audit.jsonl"), ("'list'", "show")),
    Case("show-without-a-log", ("show",), ("required", "log")),
    Case("unknown-flag", (*SHOW, "--csv"), ("--csv",), {"a.audit.jsonl": log(RECORD)}),
    Case("log-missing", ("show", "nope.audit.jsonl"), ("audit log not found", "nope.audit.jsonl")),
    Case("log-is-a-folder", ("show", "ledger"), ("audit log ledger", "is a folder"), {"ledger": directory}),
    Case("log-binary", SHOW, ("audit log a.audit.jsonl", "not text"), {"a.audit.jsonl": b"\xff\xfe\x00\x01"}),
    Case("log-not-json", SHOW, ("a.audit.jsonl", "line 2", "not a JSON line"),
         {"a.audit.jsonl": log(RECORD, "time: yesterday")}),
    Case("log-truncated-line", SHOW, ("a.audit.jsonl", "line 1", "not a JSON line"),
         {"a.audit.jsonl": json.dumps(RECORD)[:40] + "\n"}),
    Case("line-a-list", SHOW, ("a.audit.jsonl", "line 1", "list"), {"a.audit.jsonl": "[1, 2, 3]\n"}),
    Case("line-a-number", SHOW, ("a.audit.jsonl", "line 1", "int"), {"a.audit.jsonl": "42\n"}),
    Case("a-ledger-instead", SHOW, ("a.audit.jsonl", "line 1", "not an audit record"),
         {"a.audit.jsonl": '{"entries": []}\n'}),
    Case("tensors-a-number", SHOW, ("line 2", "'tensors'", "a list"), bad(tensors=5)),
    Case("metrics-a-list", SHOW, ("line 2", "'metrics'", "an object"), bad(metrics=[1])),
    Case("error-a-string", SHOW, ("line 2", "'error'", "an object"), bad(error="boom")),
    Case("epsilon-a-list", SHOW, ("line 2", "'epsilon'"), bad(epsilon=[1.0])),
    Case("sha256-a-number", SHOW, ("line 2", "'sha256'", "a string"), bad(sha256=5)),
    Case("bytes-a-string", SHOW, ("line 2", "'bytes'", "a number"), bad(bytes="many")),
    Case("json-flag-still-checks", (*SHOW, "--json"), ("line 2", "'tensors'"), bad(tensors="x")),
]
# fmt: on


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input_is_refused_in_one_line_before_any_output(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(main, case, tmp_path, monkeypatch, capsys)


def test_an_empty_log_says_nothing_was_sent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.audit.jsonl"
    path.write_text("")
    assert main(["show", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: no messages recorded (the site has sent nothing)\n"


def test_a_nan_epsilon_prints_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The log writes a non-finite epsilon as the string "nan"; the table shows it, no traceback."""
    path = tmp_path / "a.audit.jsonl"
    path.write_text(log(RECORD, {**RECORD, "epsilon": "nan"}))
    assert main(["show", str(path)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 3 and "1.2500" in rows[1] and " nan " in rows[2], rows
