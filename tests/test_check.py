"""common/privacy/governance/check.py: a privacy officer's independent check of a ledger.

Proves: the tool recomputes epsilon from the ledger with Opacus and with Google's dp_accounting
(independent implementation), rebuilds the DP-SGD history from the run's config and the record
count, reports a match for an honest ledger and exits 1 when an entry disagrees with the config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from common import config as config_mod
from common.privacy.governance.check import main

pytestmark = pytest.mark.unit

N, B = 120, 16


def write(tmp_path: Path, sigma: float = 1.3) -> tuple[Path, Path]:
    exp = config_mod.load(None, {"privacy.mode": "local", "privacy.noise_multiplier": 1.3, "train.batch_size": B})
    cfg = tmp_path / "config.yaml"
    config_mod.dump(exp, cfg)
    batches = math.ceil(N / B)  # 8
    entry = {"noise_multiplier": sigma, "sample_rate": 1 / batches, "steps": batches, "kind": "dpsgd",
             "run": "r", "status": "committed"}  # fmt: skip
    ledger = tmp_path / "site.json"
    ledger.write_text(json.dumps({"entries": [entry, {**entry}]}))
    return ledger, cfg


def test_honest_ledger_matches_and_epsilons_agree(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("dp_accounting")
    ledger, cfg = write(tmp_path)
    assert main([str(ledger), "--records", str(N), "--config", str(cfg), "--run", "r"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 ledger rounds match" in out
    opacus = float(out.split("epsilon (Opacus rdp) at delta=1e-05: ")[1].split()[0])
    google = float(out.split("epsilon (dp_accounting rdp, independent): ")[1].split()[0])
    assert abs(opacus - google) / google < 0.02


def test_ledger_that_disagrees_with_the_config_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ledger, cfg = write(tmp_path, sigma=0.9)  # less noise recorded than the job configured
    assert main([str(ledger), "--records", str(N), "--config", str(cfg)]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.json"), "--records", "5"]) == 2
