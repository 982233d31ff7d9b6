"""`confide site-status`: the site admin's view of its policy, budget and last messages.

Expected epsilons are composed here with Opacus's RDP accountant directly from the entries' own
(noise, sample rate, steps), not through Confide's ledger or accounting code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from client import site_status

pytestmark = pytest.mark.unit

ROUND = {"noise_multiplier": 1.2, "sample_rate": 0.1, "steps": 10, "kind": "dpsgd", "delta": 1e-5,
         "status": "committed"}  # fmt: skip


def rdp(rounds: int, delta: float = 1e-5) -> float:
    """Epsilon of ``rounds`` rounds of ROUND's DP-SGD step (one history entry: RDP adds up over steps)."""
    acc = RDPAccountant()
    acc.history = [(ROUND["noise_multiplier"], ROUND["sample_rate"], ROUND["steps"] * rounds)]
    return float(acc.get_epsilon(delta=delta))


def write_site(folder: Path, runs: dict[str, int]) -> Path:
    """A site's ledger with ``rounds`` DP-SGD rounds per run, and an audit log with one sent
    message per round plus one refusal at the end."""
    folder.mkdir(parents=True)
    entries = [{**ROUND, "run": run, "round": r} for run, rounds in runs.items() for r in range(1, rounds + 1)]
    (folder / "site-a.json").write_text(json.dumps({"entries": entries}))
    lines = [{"time": f"t{i}", "run": int(e["run"]), "round": e["round"], "type": "train", "outcome": "sent",
              "tensors": [{}] * 3, "bytes": 1000 + i, "epsilon": 0.5 * (i + 1), "error": None}
             for i, e in enumerate(entries)]  # fmt: skip
    refused = {"refused": True, "message": "rule 'allowed-modes'"}
    lines.append({"time": "t9", "run": 77, "round": 1, "type": "train", "outcome": "error", "tensors": [],
                  "bytes": 0, "epsilon": None, "error": refused})  # fmt: skip
    (folder / "site-a.audit.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def test_budget_spent_remaining_per_job_and_jobs_left(tmp_path: Path) -> None:
    """Proves the figures an admin plans with: two jobs (2 and 3 rounds of the same DP-SGD step)
    spent epsilon = RDP(5 rounds) in total, each job its own rounds' epsilon; what remains is
    the cap minus that; and the number of further jobs like the last is the largest k with
    RDP(5 + 3k rounds) <= cap."""
    ledger = write_site(tmp_path / "ledger", {"111": 2, "222": 3}) / "site-a.json"
    status = site_status.ledger_status(ledger, cap=6.0)
    assert status.spent == pytest.approx(rdp(5), rel=1e-9)
    assert status.remaining == pytest.approx(6.0 - rdp(5), rel=1e-9)
    assert [(j.run, j.rounds, j.entries) for j in status.jobs] == [("111", [1, 2], 2), ("222", [1, 2, 3], 3)]
    assert status.jobs[0].epsilon == pytest.approx(rdp(2), rel=1e-9)
    assert status.jobs[1].epsilon == pytest.approx(rdp(3), rel=1e-9)
    k = 0
    while rdp(5 + 3 * (k + 1)) <= 6.0:
        k += 1
    assert k >= 1 and status.more_like_last == k


def test_report_shows_policy_in_force_budget_and_last_messages(tmp_path: Path, capsys) -> None:
    """Proves the command's view from the site's settings: the policy file merged with the
    CONFIDE_MAX_EPSILON override (3 wins over the file's 8, and the source says so), the ledger's
    spent and remaining epsilon against that cap, and the last 2 audit-log lines (a sent update
    and the refusal)."""
    folder = write_site(tmp_path / "ledger", {"111": 2})
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"allowed-modes": ["local"], "max-epsilon": 8, "site-metrics": "withhold"}))
    env = {"CONFIDE_SITE_NAME": "site-a", "CONFIDE_LEDGER_DIR": str(folder), "CONFIDE_PRIVACY_POLICY": str(policy),
           "CONFIDE_MAX_EPSILON": "3"}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert site_status.main(["--last", "2"]) == 0
    out = capsys.readouterr().out
    spent = rdp(2)
    assert f"policy file {policy} < node config" in out
    assert "allowed-modes local | max-epsilon 3 |" in out and "site-metrics withhold" in out
    assert f"epsilon spent {spent:.4f} of 3 (delta 1e-05, rdp); remaining {3 - spent:.4f}" in out
    assert "last 2 of 3 messages sent" in out
    assert "round 2  train  sent  epsilon 1.0000  3 tensors, 1001 bytes" in out
    assert "REFUSED: rule 'allowed-modes'" in out


def test_a_site_that_never_trained_and_bad_settings(tmp_path: Path, capsys) -> None:
    """Proves a fresh site reports epsilon 0 of its cap (no ledger yet) and that a bad policy
    file stops the command with one line naming it (exit 2)."""
    (tmp_path / "empty").mkdir()
    assert site_status.main(["--site", "site-a", "--ledger-dir", str(tmp_path / "empty"), "--policy", ""]) == 0
    assert "spent nothing (epsilon 0 of 8)" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert site_status.main(["--ledger-dir", str(tmp_path / "empty"), "--policy", str(bad)]) == 2
    assert f"privacy policy file {bad} is not valid JSON" in capsys.readouterr().err
