"""The baseline exported in the model's place (server/baseline_phase.py, server/run.py).

What this proves:
- the baseline replaces the model only where the export is chosen on the sites' held-out data
  (strategy.final_model best_held_out), both held-out accuracies were released, and the baseline's
  is strictly higher; never on the last round's or a tail average's export, never without a
  held-out figure, never on a tie, never when baseline.export_if_better is off;
- the global model's own held-out accuracy decides, not the sites' fine-tuned models';
- the export puts the baseline's layer at model/, replacing what was there, and its card metrics
  are the baseline's exported round's;
- the card's lines say which model was exported and where the trained one is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common import config as config_mod
from server.baseline_phase import (
    TRAINED_MODEL,
    BaselineResult,
    baseline_final,
    export_baseline,
    exported_instead,
)
from server.run import baseline_lines
from server.selection import held_out

pytestmark = pytest.mark.unit


def result(sites: float | None = 0.9, exported_round: int = 2) -> BaselineResult:
    return BaselineResult(
        features="pixels", rounds=3, exported_round=exported_round, exported="round 2's global model",
        central_accuracy=0.8, central_macro_f1=0.7, sites_accuracy=sites, target_epsilon=None,
    )  # fmt: skip


def final(accuracy: float | None, **more: float) -> dict:
    return {"federated": {"accuracy": accuracy, **more}} if accuracy is not None else {}


def job(**kw: object) -> config_mod.ExperimentConfig:
    return config_mod.load(None, kw)


def test_the_baseline_replaces_the_model_only_when_it_is_better_on_held_out_data() -> None:
    on = job()
    assert exported_instead(on, "best_held_out", result(0.9), final(0.85))
    assert not exported_instead(on, "best_held_out", result(0.85), final(0.85))  # a tie keeps the model
    assert not exported_instead(on, "best_held_out", result(0.8), final(0.85))
    assert not exported_instead(on, "last", result(0.9), final(0.85))
    assert not exported_instead(on, "tail_average", result(0.9), final(0.85))
    assert not exported_instead(on, "best_held_out", None, final(0.85))  # no baseline in this job
    assert not exported_instead(on, "best_held_out", result(None), final(0.85))  # sites withheld it
    assert not exported_instead(on, "best_held_out", result(0.9), final(None))
    assert not exported_instead(job(**{"baseline.export_if_better": False}), "best_held_out", result(0.9), final(0.85))


def test_the_global_models_accuracy_decides_not_the_fine_tuned_sites() -> None:
    """With strategy.local_finetune the last line's 'accuracy' is of the sites' fine-tuned models."""
    assert held_out(final(0.95, global_accuracy=0.8)) == 0.8
    assert exported_instead(job(), "best_held_out", result(0.9), final(0.95, global_accuracy=0.8))


def test_the_export_puts_the_baselines_layer_at_model(tmp_path: Path) -> None:
    (tmp_path / "baseline" / "model").mkdir(parents=True)
    (tmp_path / "baseline" / "model" / "model.pt").write_text("baseline layer")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "stale.pt").write_text("an earlier attempt's export")
    lines = [{"round": r, "central": {"accuracy": r / 10}, "federated": {"accuracy": r / 5}} for r in range(4)]
    (tmp_path / "baseline" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    export_baseline(tmp_path)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.pt"]
    assert (tmp_path / "model" / "model.pt").read_text() == "baseline layer"
    expected = {"federated": {"accuracy": 0.4}, "central": {"accuracy": 0.2}}
    assert baseline_final(tmp_path, result(exported_round=2)) == expected


def test_the_card_says_which_model_was_exported() -> None:
    model = {"central": {"accuracy": 0.7}, "federated": {"accuracy": 0.85}}
    replaced = baseline_lines(job(), result(0.9), model, 3, instead=True)
    assert any(f"the trained model is in {TRAINED_MODEL}/" in x for x in replaced)
    assert not any("baseline/model" in x for x in replaced)
    kept = baseline_lines(job(), result(0.9), model, 3)
    assert any("baseline/model" in x for x in kept) and not any(TRAINED_MODEL in x for x in kept)
