"""Resume in the in-process simulation (server/run.py, common/rundir.py, server/loop.py): a run
that stops at round 2 of 4 and is resumed ends with the same global model as a run that was never
interrupted, so the weights, the round, the server optimizer's momentum and the history all
continue (FedAvgM: without its momentum restored the weights differ by far more than the
tolerance). The expected model is the uninterrupted run's, computed without any resume code.
The real-process version (`flwr run` killed mid-round) is tests/test_flwr_run.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message

from common import config as config_mod
from common.baseline import PHASE
from common.errors import ConfideError
from common.rundir import INCOMPLETE, RESUMES
from simulations.local import simulate

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def _crash_in_round_2(msg: Message, context: Context, call_next):
    """The model's round 2 only: the baseline phase before it (common/baseline.py) has rounds too."""
    config = msg.content["config"]
    if int(config.get("server-round", 0)) == 2 and config.get("phase") != PHASE:
        raise RuntimeError("the coordinator's machine was restarted")
    return call_next(msg, context)


def _lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    exp = config_mod.load(
        "simulations/configs/default.yaml",
        {
            "output_dir": str(tmp_path / "runs"),
            "model.name": "resnet8",
            "data.num_sites": 2,
            "strategy.min_sites": 2,
            "strategy.rounds": 4,
            "strategy.name": "fedavgm",
            "strategy.server_momentum": 0.9,
            "data.max_samples": 400,
            "train.lr": 0.05,
        },
    )
    reference = simulate(exp)
    with pytest.raises(ConfideError, match="round 2: 0 valid update"):
        simulate(exp, client_mods=[_crash_in_round_2])
    (stopped,) = [p for p in (tmp_path / "runs").iterdir() if p.name.endswith(INCOMPLETE)]
    resumed = simulate(exp, resume=stopped)

    assert resumed == stopped.with_name(stopped.name.removesuffix(INCOMPLETE)) and not stopped.exists()
    lines, ref_lines = _lines(resumed), _lines(reference)
    assert [x["round"] for x in lines] == [0, 1, 2, 3, 4]
    assert len({x["run_id"] for x in lines[:2]}) == 1 and len({x["run_id"] for x in lines[2:]}) == 1
    assert lines[0]["run_id"] != lines[2]["run_id"]
    assert [sorted(x) for x in lines] == [sorted(x) for x in ref_lines]
    assert sorted(lines[-1]["sites"]) == sorted(ref_lines[-1]["sites"]) == ["site-0", "site-1"]
    record = json.loads((resumed / RESUMES).read_text())
    assert record["from_round"] == 1 and "restarted" in record["stopped_because"]

    got = torch.load(resumed / "checkpoint.pt", weights_only=True)
    want = torch.load(reference / "checkpoint.pt", weights_only=True)
    assert got["round"] == want["round"] == 4
    worst = max(float((got["state_dict"][k].double() - v.double()).abs().max()) for k, v in want["state_dict"].items())
    assert worst < 1e-4, f"resumed weights differ from the uninterrupted run's by {worst}"
    for k, v in want["server_state"].items():
        np.testing.assert_allclose(got["server_state"][k].numpy(), v.numpy(), atol=1e-4)
    assert lines[-1]["central"]["accuracy"] == pytest.approx(ref_lines[-1]["central"]["accuracy"], abs=1e-3)
