"""A local-DP job stopped in round 3 of 4 and resumed into ANOTHER output folder ends with the
epsilon of an uninterrupted 4-round job: the sites' ledgers live with the sites (the state folder),
not in the run's output folder, so the resume cannot restart them. The expected epsilon is
composed here by Google's dp_accounting from the DP parameters the sites reported (noise multiplier,
sample rate, steps per round) over all 4 rounds; ``check-ledger --run-folder`` agrees."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import rdp
from flwr.app import Context, Message

from common import config as config_mod
from common.errors import ConfideError
from common.privacy.governance.check import main as check_main
from common.rundir import INCOMPLETE
from simulations.local import simulate

pytestmark = pytest.mark.sim


def _stop_in_round_3(msg: Message, context: Context, call_next):
    if int(msg.content["config"].get("server-round", 0)) == 3:
        raise RuntimeError("the coordinator's machine was restarted")
    return call_next(msg, context)


def test_a_resume_into_a_new_output_folder_continues_the_sites_epsilon(project_root: Path) -> None:
    keys = {
        "output_dir": "first", "model.name": "resnet8", "model.norm": "group", "data.num_sites": 2,
        "strategy.min_sites": 2, "strategy.rounds": 4, "data.max_samples": 240, "train.max_steps": 3,
        "privacy.mode": "local", "privacy.target_epsilon": 4.0, "train.batch_size": 16,
    }  # fmt: skip
    exp = config_mod.load("simulations/configs/default.yaml", keys)
    with pytest.raises(ConfideError):
        simulate(exp, client_mods=[_stop_in_round_3])
    (stopped,) = (project_root / "first").glob(f"*{INCOMPLETE}")
    moved = config_mod.replace(exp, output_dir=str(project_root / "second"))
    done = simulate(moved, resume=stopped)

    lines = [json.loads(x) for x in (done / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1, 2, 3, 4]
    privacy = json.loads((done / "privacy.json").read_text())
    for site in ("site-0", "site-1"):
        reported = [x["sites"][site]["train"] for x in lines[1:]]
        acc = rdp.RdpAccountant()
        for r in reported:
            event = dp_accounting.PoissonSampledDpEvent(r["sample_rate"], dp_accounting.GaussianDpEvent(
                r["noise_multiplier"]))  # fmt: skip
            acc.compose(event, int(r["steps"]))
        expected = acc.get_epsilon(reported[-1]["delta"])
        assert expected == pytest.approx(4.0, rel=0.02)  # the job's whole target, not half of it
        assert privacy["sites"][site]["epsilon"] == pytest.approx(expected, rel=2e-3), site
        (ledger,) = (project_root / "confide-state" / "ledgers").glob(f"*/{site}.json")
        assert check_main([str(ledger), "--records", "100", "--run-folder", str(done)]) == 0
