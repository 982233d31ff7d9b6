"""``confide site-status`` (client/site_status.py) refuses a bad setting or file in one line
before it prints anything (the contract in tests/one_line.py): the ledger folder, the policy file,
the overrides (with their ranges: max-epsilon > 0, min-noise-multiplier >= 0, last >= 0), and the
ledgers and audit logs it reads. Every case runs with the site container's variables unset, so
only the case's own arguments count.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.site_status import main
from tests.one_line import Case, directory, params, refused

pytestmark = pytest.mark.unit

ENTRY = {"noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 100, "kind": "dpsgd", "run": "r", "round": 1,
         "status": "committed"}  # fmt: skip
AUDIT = {"v": 1, "time": "2026-01-01T00:00:00.000Z", "run": 7, "round": 1, "type": "train", "outcome": "sent",
         "tensors": [], "bytes": 0, "epsilon": 0.5, "error": None}  # fmt: skip
LEDGERS = {"led/site-a.json": json.dumps({"entries": [ENTRY]})}
DIR = ("--ledger-dir", "led")


def policy(text: str) -> dict[str, object]:
    return {"led": directory, "p.json": text}


# fmt: off
CASES = [
    Case("unknown-flag", (*DIR, "--cap", "3"), ("--cap",), {"led": directory}),
    Case("last-negative", (*DIR, "--last", "-3"), ("--last -3", "last >= 0"), {"led": directory}),
    Case("last-not-a-number", (*DIR, "--last", "all"), ("--last", "'all'"), {"led": directory}),
    Case("ledger-dir-missing", ("--ledger-dir", "nope"), ("--ledger-dir nope", "not found")),
    Case("ledger-dir-a-file", ("--ledger-dir", "l.json"), ("--ledger-dir l.json", "is a file"), {"l.json": "{}"}),
    Case("policy-missing", (*DIR, "--policy", "nope.json"), ("--policy nope.json", "not found"), {"led": directory}),
    Case("policy-a-folder", (*DIR, "--policy", "led"), ("--policy led", "folder"), {"led": directory}),
    Case("policy-empty", (*DIR, "--policy", "p.json"), ("--policy p.json", "empty"), policy("")),
    Case("policy-yaml", (*DIR, "--policy", "p.json"), ("p.json", "not valid JSON"), policy("max-epsilon: 5\n")),
    Case("policy-unknown-key", (*DIR, "--policy", "p.json"), ("p.json", "'max-epsilonn'"),
         policy('{"max-epsilonn": 5}')),
    Case("policy-value-wrong-type", (*DIR, "--policy", "p.json"), ("p.json", "'max-epsilon'", "'lots'"),
         policy('{"max-epsilon": "lots"}')),
    Case("policy-a-list", (*DIR, "--policy", "p.json"), ("p.json",), policy("[1, 2]")),
    Case("policy-negative-cap", (*DIR, "--policy", "p.json"), ("'max-epsilon'", "> 0"), policy('{"max-epsilon": -1}')),
    Case("max-epsilon-negative", (*DIR, "--max-epsilon", "-1"), ("--max-epsilon -1", "> 0"), {"led": directory}),
    Case("max-epsilon-zero", (*DIR, "--max-epsilon", "0"), ("--max-epsilon 0", "> 0"), {"led": directory}),
    Case("max-epsilon-not-a-number", (*DIR, "--max-epsilon", "lots"), ("--max-epsilon 'lots'", "> 0"),
         {"led": directory}),
    Case("max-epsilon-nan", (*DIR, "--max-epsilon", "nan"), ("--max-epsilon nan", "> 0"), {"led": directory}),
    Case("min-noise-negative", (*DIR, "--min-noise-multiplier", "-0.5"), ("--min-noise-multiplier -0.5", ">= 0"),
         {"led": directory}),
    Case("site-misspelt", (*DIR, "--site", "site-b"), ("--site 'site-b'", "led/site-b.json", "site-a"), LEDGERS),
    Case("ledger-not-json", DIR, ("ledger led/site-a.json", "not JSON"), {"led/site-a.json": "{"}),
    Case("ledger-empty", DIR, ("ledger led/site-a.json", "empty"), {"led/site-a.json": ""}),
    Case("ledger-bad-entry", DIR, ("led/site-a.json", "entry 0", "steps"),
         {"led/site-a.json": json.dumps({"entries": [{"noise_multiplier": 1.0, "sample_rate": 0.1}]})}),
    Case("audit-log-not-json", DIR, ("led/site-a.audit.jsonl", "line 1", "not a JSON line"),
         {**LEDGERS, "led/site-a.audit.jsonl": "oops\n"}),
    Case("audit-log-line-a-list", DIR, ("led/site-a.audit.jsonl", "line 2", "list"),
         {**LEDGERS, "led/site-a.audit.jsonl": json.dumps(AUDIT) + "\n[1]\n"}),
]
# fmt: on


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input_is_refused_in_one_line_before_any_output(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("CONFIDE_SITE_NAME", "CONFIDE_PRIVACY_POLICY", "CONFIDE_MAX_EPSILON", "CONFIDE_MIN_NOISE_MULTIPLIER",
                 "CONFIDE_LEDGER_DIR"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    refused(main, case, tmp_path, monkeypatch, capsys)


def test_a_bad_override_from_the_environment_is_named_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In the site container the overrides come from its variables: the line names the variable."""
    (tmp_path / "led").mkdir()
    monkeypatch.setenv("CONFIDE_MAX_EPSILON", "-2")
    assert main(["--ledger-dir", str(tmp_path / "led"), "--policy", ""]) == 2
    assert "$CONFIDE_MAX_EPSILON" in capsys.readouterr().err
