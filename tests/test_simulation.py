"""End to end, in process: the real ServerApp and ClientApp under Flower's simulation engine.

Proves: a 2-site 2-round job runs for ResNet and for BERT; the run folder is complete
(resolved config, per-round metrics with per-site values, checkpoint, exported model,
model card); accuracy rises above chance; the exported model reloads to identical
predictions and scores a file; a malformed update stops the run with a clear message and
leaves only an '.incomplete' folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from common import config as config_mod
from common.data import read_test
from common.errors import ConfideError
from common.export import load_model
from common.models import create_model
from simulations.local import simulate
from simulations.score import score
from tests.conftest import small_experiment

pytestmark = pytest.mark.slow


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resnet_two_sites_two_rounds(tmp_path: Path) -> None:
    exp = small_experiment(**{"train.lr": 0.002})
    run = simulate(exp)
    assert sorted(p.name for p in run.iterdir()) == [
        "MODEL_CARD.md",
        "checkpoint.pt",
        "config.yaml",
        "metrics.jsonl",
        "model",
    ]
    resolved = config_mod.load(run / "config.yaml")
    assert resolved.data.labels == tuple(str(i) for i in range(10))  # derived once, recorded
    rounds = read_metrics(run)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    last = rounds[-1]
    assert set(last["sites"]) == {"site-0", "site-1"}
    for site in last["sites"].values():
        assert site["evaluate"]["num_examples"] > 0 and site["train"]["bytes_up"] > 1e6
    assert last["federated"]["worst_accuracy"] <= last["federated"]["accuracy"]
    assert last["central"]["accuracy"] > 0.3 > rounds[0]["central"]["accuracy"]  # chance is 0.1
    assert "site-0" in (run / "MODEL_CARD.md").read_text()

    # the exported model equals the last checkpoint and scores a file with the same result
    saved = load_model(run / "model")
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    fresh = create_model(resolved.model, 10)
    fresh.load_state_dict(ckpt["state_dict"])
    fresh.eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), saved.model(x))
    test = read_test(resolved.data)
    npz = tmp_path / "digits_test.npz"
    np.savez(npz, test_images=test.images[:, 0], test_labels=np.array([int(v) for v in test.raw_labels]))
    result = score(run / "model", npz, out=tmp_path / "pred.csv")
    assert result["accuracy"] == pytest.approx(last["central"]["accuracy"])
    assert len((tmp_path / "pred.csv").read_text().splitlines()) == result["records"] + 1


def test_bert_two_sites_two_rounds() -> None:
    exp = config_mod.load(
        None,
        {
            "model.name": "bert",
            "model.max_length": 24,
            "data.source": "synthetic_text",
            "data.num_sites": 2,
            "data.max_samples": 240,
            "strategy.rounds": 2,
            "train.lr": 1e-4,
            "train.batch_size": 16,
        },
    )
    run = simulate(exp)
    rounds = read_metrics(run)
    assert len(rounds) == 3 and set(rounds[-1]["sites"]) == {"site-0", "site-1"}
    chance = 1 / 6
    assert rounds[-1]["central"]["accuracy"] > chance + 0.2
    cfg = yaml.safe_load((run / "model" / "config.json").read_text())
    assert len(cfg["id2label"]) == 6


def poison(msg, context, call_next):
    """A ClientApp mod that turns site 1's update into NaNs (a malformed update)."""
    from flwr.app import Array, ArrayRecord

    reply = call_next(msg, context)
    if context.node_config.get("partition-id") == 1 and not reply.has_error() and "arrays" in reply.content:
        arrays = reply.content["arrays"]
        reply.content["arrays"] = ArrayRecord(
            {k: Array(np.full_like(v.numpy(), np.nan)) if v.numpy().dtype.kind == "f" else v for k, v in arrays.items()}
        )
    return reply


def test_malformed_update_stops_the_run_naming_the_site(project_root: Path) -> None:
    exp = small_experiment(**{"strategy.rounds": 1, "data.max_samples": 200})
    with pytest.raises(ConfideError, match="site .site-1.: tensor .conv1.weight. has non-finite values"):
        simulate(exp, client_mods=[poison])
    (run,) = list((project_root / "runs").iterdir())
    assert run.name.endswith(".incomplete")
    assert "non-finite" in (run / "FAILED.txt").read_text()
