"""``confide check-ledger`` (common/privacy/governance/check.py) refuses every bad argument and file in one
line before it computes anything (the contract in tests/one_line.py), reports with the job's own
accountant and says which, and folds the accountants' warnings into one plain line.

Each refusal case is one bad input a privacy officer could type; the expected fragments name the
argument or file and, for a number, its valid range (0 < delta < 1, records >= 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.privacy.governance.check import main
from tests.one_line import Case, directory, params, refused

pytestmark = pytest.mark.unit


def entry(**changes: object) -> dict:
    base = {"noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 100, "kind": "dpsgd", "run": "r", "round": 1,
            "status": "committed"}  # fmt: skip
    return {**base, **changes}


def ledger(*entries: dict) -> str:
    return json.dumps({"entries": list(entries)})


GOOD = {"l.json": ledger(entry())}
METRICS = json.dumps({"run_id": "r", "round": 1, "sites": {"l": {"train": True}}}) + "\n"

# fmt: off
CASES = [
    Case("delta-one", ("l.json", "--delta", "1"), ("--delta 1", "0 < delta < 1"), GOOD),
    Case("delta-negative", ("l.json", "--delta", "-0.1"), ("--delta -0.1", "0 < delta < 1"), GOOD),
    Case("delta-five", ("l.json", "--delta", "5"), ("--delta 5", "0 < delta < 1"), GOOD),
    Case("delta-zero", ("l.json", "--delta", "0"), ("--delta 0", "0 < delta < 1"), GOOD),
    Case("delta-nan", ("l.json", "--delta", "nan"), ("--delta nan", "0 < delta < 1"), GOOD),
    Case("delta-not-a-number", ("l.json", "--delta", "tiny"), ("--delta", "'tiny'"), GOOD),
    Case("records-negative", ("l.json", "--records", "-10"), ("--records -10", "records >= 1"), GOOD),
    Case("records-zero", ("l.json", "--records", "0"), ("--records 0", "records >= 1"), GOOD),
    Case("records-fraction", ("l.json", "--records", "2.5"), ("--records", "'2.5'"), GOOD),
    Case("delta-too-large-for-records", ("l.json", "--delta", "0.5", "--records", "10"),
         ("--delta 0.5", "--records 10", "1/records = 0.1"), GOOD),
    Case("neither-delta-nor-records", ("l.json",), ("--delta", "--records"), GOOD),
    Case("no-ledger-argument", ("--delta", "1e-5"), ("ledger",)),
    Case("unknown-flag", ("l.json", "--delta", "1e-5", "--epsilon", "3"), ("--epsilon",), GOOD),
    Case("accountant-unknown", ("l.json", "--delta", "1e-5", "--accountant", "gdp"), ("--accountant", "'gdp'"), GOOD),
    Case("ledger-missing", ("nope.json", "--delta", "1e-5"), ("ledger not found", "nope.json")),
    Case("ledger-is-a-folder", ("ledgers", "--delta", "1e-5"), ("ledger ledgers", "is a folder"),
         {"ledgers": directory}),
    Case("ledger-empty", ("l.json", "--delta", "1e-5"), ("ledger l.json", "empty"), {"l.json": ""}),
    Case("ledger-not-json", ("l.json", "--delta", "1e-5"), ("ledger l.json", "not JSON"), {"l.json": "entries: []"}),
    Case("ledger-a-list", ("l.json", "--delta", "1e-5"), ("ledger l.json", "not a privacy ledger"),
         {"l.json": "[1, 2]"}),
    Case("ledger-binary", ("l.json", "--delta", "1e-5"), ("ledger l.json",), {"l.json": b"\xff\xfe\x00garbage"}),
    Case("entry-without-steps", ("l.json", "--delta", "1e-5"), ("ledger l.json", "entry 0", "steps"),
         {"l.json": json.dumps({"entries": [{"noise_multiplier": 1.0, "sample_rate": 0.1}]})}),
    Case("entry-sample-rate-above-one", ("l.json", "--delta", "1e-5"), ("entry 1", "sample_rate", "(0, 1]"),
         {"l.json": ledger(entry(), entry(sample_rate=2))}),
    Case("entry-negative-noise", ("l.json", "--delta", "1e-5"), ("entry 0", "noise_multiplier"),
         {"l.json": ledger(entry(noise_multiplier=-1))}),
    Case("entries-mixed-accountants", ("l.json", "--delta", "1e-5"), ("ledger l.json", "prv, rdp", "--accountant"),
         {"l.json": ledger(entry(accountant="rdp"), entry(accountant="prv"))}),
    Case("entry-unknown-accountant", ("l.json", "--delta", "1e-5"), ("ledger l.json", "'gdp'", "rdp, prv"),
         {"l.json": ledger(entry(accountant="gdp"))}),
    Case("site-not-in-ledger", ("l.json", "--delta", "1e-5", "--site", "nowhere"),
         ("--site 'nowhere'", "sites in it: north"), {"l.json": ledger(entry(site="north"))}),
    Case("config-missing", ("l.json", "--records", "100", "--config", "nope.yaml"), ("--config", "nope.yaml"), GOOD),
    Case("config-is-a-folder", ("l.json", "--records", "100", "--config", "run"), ("--config run", "folder"),
         {**GOOD, "run": directory}),
    Case("config-without-records", ("l.json", "--delta", "1e-5", "--config", "c.yaml"), ("--config", "--records"),
         {**GOOD, "c.yaml": "train: {lr: 0.1}\n"}),
    Case("config-unknown-key", ("l.json", "--records", "100", "--config", "c.yaml"), ("'train.lrr'",),
         {**GOOD, "c.yaml": "train: {lrr: 0.1}\n"}),
    Case("run-without-config", ("l.json", "--delta", "1e-5", "--run", "r"), ("--run 'r'", "--config"), GOOD),
    Case("run-not-in-ledger", ("l.json", "--records", "100", "--config", "c.yaml", "--run", "zzz"),
         ("--run 'zzz'", "runs in it: r"), {**GOOD, "c.yaml": "train: {lr: 0.1}\n"}),
    Case("run-folder-sites-a-list", ("l.json", "--delta", "1e-5", "--run-folder", "run"),
         ("--run-folder run", "line 1", "'sites'"), {**GOOD, "run/metrics.jsonl": '{"round": 1, "sites": [1]}\n'}),
    Case("run-folder-missing", ("l.json", "--delta", "1e-5", "--run-folder", "runs/x"),
         ("--run-folder", "runs/x", "not found"), GOOD),
    Case("run-folder-without-metrics", ("l.json", "--delta", "1e-5", "--run-folder", "run"),
         ("--run-folder run", "metrics.jsonl"), {**GOOD, "run": directory}),
    Case("run-folder-bad-metrics", ("l.json", "--delta", "1e-5", "--run-folder", "run"),
         ("--run-folder run", "metrics.jsonl", "line 2"), {**GOOD, "run/metrics.jsonl": METRICS + "[3]\n"}),
]
# fmt: on


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input_is_refused_in_one_line_before_any_epsilon(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(main, case, tmp_path, monkeypatch, capsys)


def test_reports_with_the_accountant_the_ledger_records_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ledger whose entries record prv is reported with prv unless --accountant says otherwise,
    and the output names the accountant and why. The two accountants give different figures for
    this history, so the default figure is prv's (the one --accountant prv prints), not rdp's."""
    path = tmp_path / "l.json"
    path.write_text(ledger(entry(accountant="prv", noise_multiplier=1.0, sample_rate=0.02, steps=500)))

    def run(*extra: str) -> str:
        assert main([str(path), "--delta", "1e-5", *extra]) == 0
        return capsys.readouterr().out

    default, prv, rdp = run(), run("--accountant", "prv"), run("--accountant", "rdp")
    assert "accountant: prv (the one the ledger's entries record)" in default
    assert "accountant: rdp (chosen with --accountant)" in rdp

    def opacus(out: str) -> str:
        return next(line for line in out.splitlines() if line.startswith("epsilon (Opacus "))

    assert opacus(default).startswith("epsilon (Opacus prv)")
    assert opacus(default) == opacus(prv) != opacus(rdp).replace("rdp", "prv")


def test_a_ledger_without_a_recorded_accountant_uses_rdp_and_says_it_is_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "l.json"
    path.write_text(ledger(entry()))
    assert main([str(path), "--delta", "1e-5"]) == 0
    out = capsys.readouterr().out
    assert "accountant: rdp (the ledger records none: Confide's default)" in out
    assert "epsilon (Opacus rdp)" in out


@pytest.mark.parametrize(
    ("noisy", "named"),
    [
        (entry(noise_multiplier=0.5, sample_rate=0.9, steps=10), "did not converge"),
        (entry(noise_multiplier=20.0, sample_rate=0.001, steps=10), "edge of the orders"),
    ],
    ids=["dp-accounting-orders-dropped", "opacus-order-at-the-edge"],
)
def test_the_accountants_warnings_fold_into_one_plain_line(
    noisy: dict, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Little noise at a high sample rate makes dp_accounting drop its fractional Renyi orders (one
    log line each); much noise makes Opacus's best order the largest it tries (a warning per
    call). Either way the output has one 'note:' line naming it, and none of the libraries' lines."""
    pytest.importorskip("dp_accounting")
    path = tmp_path / "l.json"
    path.write_text(ledger(noisy))
    assert main([str(path), "--delta", "1e-5"]) == 0
    out, err = capsys.readouterr()
    everything = out + err + caplog.text
    assert "failed to converge" not in everything and "Optimal order" not in everything, everything
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, out
    assert named in notes[0] and "looser upper bound" in notes[0], notes[0]
