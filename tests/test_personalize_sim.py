"""A personalised job end to end (strategy.personalize: head) through Flower's simulation engine.

Proves that in a 2-site, 2-round job no message a site sent carried a head tensor (the sites'
audit logs, which record exactly what leaves a site), that each site kept its head in its own
state folder, that the coordinator's checkpoint holds only its own untrained head, and that the
model card reports each site's personalised and local-only held-out accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.data import LabelSet
from common.models import build_model
from tests.conftest import small_experiment

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_a_personalised_job_never_releases_a_head(project_root: Path) -> None:
    from simulations.local import simulate

    exp = small_experiment(**{"strategy.personalize": "head", "train.lr": 0.002, "strategy.final_model": "last"})
    run = simulate(exp)

    folder = project_root / "confide-state" / "ledgers" / "builtin-digits"
    logs = sorted(folder.glob("*.audit.jsonl"))
    assert [p.name for p in logs] == ["site-0.audit.jsonl", "site-1.audit.jsonl"]
    sent = [json.loads(line) for p in logs for line in p.read_text().splitlines()]
    train = [r for r in sent if r["type"] == "train"]
    assert len(train) == 4 and all(r["outcome"] == "sent" for r in sent)
    for record in train:
        names = {t["name"] for t in record["tensors"]}
        assert "conv1.weight" in names  # the body travels
        assert not any(n.startswith("fc.") for n in names), record["site"]
    assert not any(t["name"].startswith("fc.") for r in sent for t in r.get("tensors") or [])

    # each site's head is on its own disk, for this job
    heads = sorted(folder.glob("*.personal/job-*.head.pt"))
    assert [p.parent.name for p in heads] == ["site-0.personal", "site-1.personal"]
    assert set(torch.load(heads[0], weights_only=True)) == {"fc.weight", "fc.bias"}

    # the coordinator's head is the model's initial one: no site's head reached it
    labels = LabelSet(tuple(str(i) for i in range(10)))
    initial = build_model(exp, len(labels)).state_dict()
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)["state_dict"]
    assert torch.equal(checkpoint["fc.weight"], initial["fc.weight"])
    assert not torch.equal(checkpoint["conv1.weight"], initial["conv1.weight"])  # the body was federated

    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for site in ("site-0", "site-1"):
        evaluated = last["sites"][site]["evaluate"]
        assert 0 <= evaluated["local_only_accuracy"] <= 1 and 0 <= evaluated["accuracy"] <= 1
    card = (run / "MODEL_CARD.md").read_text()
    assert "## Personalisation" in card and "| site-0 |" in card.split("## Personalisation")[1]
