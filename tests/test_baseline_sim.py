"""The baseline end to end: the real ServerApp and ClientApp under Flower's simulation engine.

What this proves:
- a job without DP trains its linear baseline on the same sites before the model: the run folder
  holds baseline.json and baseline/ (its round lines and exported layer, which reloads and scores
  the test set as reported), each site's audit log tells its rounds from the model's, and the
  model card sets the model against it; where the baseline is better on the sites' held-out data
  the job exports it at model/ and keeps the trained model in trained_model/;
- under local DP with baseline.epsilon_share, every site's ledger holds both parts of the job
  (entries tagged 'baseline' and the model's), the site's epsilon in privacy.json is those entries
  composed by an independent accountant (dp_accounting's RDP, from sigma, q and steps), and it is
  within the job's target; privacy.json states the split.
"""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import yaml
from dp_accounting import rdp

from common import config as config_mod
from common.data import read_test
from common.privacy.governance.ledger import Ledger
from simulations.local import simulate
from simulations.score import score
from tests.conftest import small_experiment

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_a_job_reports_its_baseline_beside_the_model(tmp_path: Path, project_root: Path) -> None:
    # A model that cannot learn at this rate, so the baseline is the better one on held-out data.
    run = simulate(small_experiment(**{"train.lr": 1e-7}))
    result = json.loads((run / "baseline.json").read_text())
    assert result["features"] == "pixels" and result["rounds"] == 2
    lines = [json.loads(x) for x in (run / "baseline" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [0, 1, 2]
    assert result["central_accuracy"] == lines[result["exported_round"]]["central"]["accuracy"]
    assert result["central_accuracy"] > 0.5  # a linear layer on 8x8 digits pixels; chance is 0.1
    # the exported layer is the one reported: it reloads and scores the test set as recorded
    test = read_test(config_mod.load(run / "config.yaml").data)
    npz = tmp_path / "digits_test.npz"
    np.savez(npz, test_images=test.images[:, 0], test_labels=np.array([int(v) for v in test.raw_labels]))
    assert score(run / "baseline" / "model", npz)["accuracy"] == pytest.approx(result["central_accuracy"])
    # each site's audit log tells the baseline's rounds from the model's
    for log in sorted(project_root.rglob("*.audit.jsonl")):
        sent = [json.loads(x) for x in log.read_text().splitlines()]
        train = [(r.get("phase", ""), r["round"]) for r in sent if r["type"] == "train"]
        assert train == [("baseline", 1), ("baseline", 2), ("", 1), ("", 2)], log
    card = (run / "MODEL_CARD.md").read_text()
    assert "## Against the simple baseline" in card
    assert f"accuracy {result['central_accuracy']:.4f})" in card
    assert "does NOT beat the baseline" in card
    # best_held_out (the default here) exports the better model on the sites' held-out data: the
    # baseline's layer at model/, scored as the baseline reported, the trained ResNet kept beside it
    model_rounds = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert result["sites_accuracy"] > max(r["federated"]["accuracy"] for r in model_rounds[1:])
    assert score(run / "model", npz)["accuracy"] == pytest.approx(result["central_accuracy"])
    assert yaml.safe_load((run / "trained_model" / "confide.yaml").read_text())["model"]["name"] != "linear"
    assert "Exported: the baseline's linear layer on pixels" in card and "trained_model/" in card


def _epsilon(entries: list[dict], delta: float) -> float:
    accountant = rdp.RdpAccountant()
    for e in entries:
        step = dp_accounting.PoissonSampledDpEvent(
            e["sample_rate"], dp_accounting.GaussianDpEvent(e["noise_multiplier"])
        )
        accountant.compose(dp_accounting.SelfComposedDpEvent(step, e["steps"]))
    return float(accountant.get_epsilon(delta))


def test_under_local_dp_both_parts_are_charged_and_stay_within_the_target() -> None:
    # ResNet-8: the budget split and the ledgers' entries depend on records, batch and noise, not the model
    exp = small_experiment(
        **{
            "model.name": "resnet8", "privacy.mode": "local", "privacy.target_epsilon": 4.0,
            "privacy.accountant": "rdp", "baseline.epsilon_share": 0.25, "data.max_samples": 240, "train.lr": 0.002,
        }
    )  # fmt: skip
    run = simulate(exp)
    statement = json.loads((run / "privacy.json").read_text())
    assert statement["budget_split"]["baseline"]["target_epsilon"] == pytest.approx(1.0)
    assert statement["budget_split"]["model"]["target_epsilon"] == pytest.approx(3.0)
    resolved = config_mod.load(run / "config.yaml")
    ledgers = sorted(Path(resolved.privacy.ledger_dir).rglob("site-*.json"))
    assert len(ledgers) == 2
    for path in ledgers:
        entries = Ledger.open(path).entries
        phases = [e.get("phase", "") for e in entries if e["kind"] == "dpsgd"]
        assert phases == ["baseline", "baseline", "", ""]  # 2 baseline rounds, then 2 model rounds
        site = statement["sites"][path.stem]
        by_hand = _epsilon(entries, site["delta"])
        assert site["epsilon"] == pytest.approx(by_hand, rel=1e-3)
        assert _epsilon([e for e in entries if e.get("phase") == "baseline"], site["delta"]) <= 1.0 * 1.01
        assert by_hand <= 4.0 * 1.01
