"""server/selection.py's model selection: 'best_held_out' exports the round with the highest site-weighted
held-out accuracy (never the test set's), a copy of that round's weights (later rounds cannot
change it); 'last' exports the final round, as does a job whose sites release no held-out accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from common import config as config_mod
from server.selection import ModelSelection

pytestmark = pytest.mark.unit


def line(acc: float | None, central: float) -> dict:
    return {"federated": {} if acc is None else {"accuracy": acc}, "central": {"accuracy": central}}


def test_best_held_out_keeps_a_copy_of_the_best_rounds_weights() -> None:
    sel = ModelSelection("best_held_out")
    w = {"x": np.zeros(2)}
    sel.offer(0, line(0.9, 0.1), w)  # round 0 (initial model) is never exported
    for r, (acc, central) in enumerate([(0.5, 0.2), (0.8, 0.9), (0.7, 0.99)], start=1):
        w["x"][:] = r  # the server reuses its arrays; the selection must have copied them
        sel.offer(r, line(acc, central), w)
    rnd, weights = sel.choice(3, {"x": np.full(2, 3.0)})
    assert rnd == 2 and np.all(weights["x"] == 2)  # held-out 0.8 wins although the test set prefers round 3
    assert "round 2" in sel.describe() and "0.8000" in sel.describe()


def test_the_global_models_accuracy_is_chosen_on_not_the_fine_tuned_models() -> None:
    """With strategy.local_finetune the last round's 'accuracy' is of the sites' fine-tuned models
    (0.99 here); the global model scored 0.80 there, below round 1's 0.90: round 1 is exported."""
    sel = ModelSelection("best_held_out")
    sel.offer(1, line(0.9, 0.5), {"x": np.full(1, 1.0)})
    last = {"federated": {"accuracy": 0.99, "global_accuracy": 0.8}, "central": {"accuracy": 0.5}}
    sel.offer(2, last, {"x": np.full(1, 2.0)})
    rnd, weights = sel.choice(2, {"x": np.full(1, 2.0)})
    assert rnd == 1 and weights["x"][0] == 1.0


def test_last_and_no_held_out_accuracy_export_the_final_round() -> None:
    for sel in (ModelSelection("last"), ModelSelection("best_held_out")):
        sel.offer(1, line(None if sel.rule == "best_held_out" else 0.9, 0.5), {"x": np.zeros(1)})
        rnd, weights = sel.choice(4, {"x": np.ones(1)})
        assert rnd == 4 and weights["x"][0] == 1


def test_dp_jobs_that_withhold_site_metrics_fall_back_to_the_last_round() -> None:
    """A DP job withholding site metrics has no held-out accuracy: the config is valid, the server
    knows up front that it will export the last round (and says so)."""
    from server.selection import strategy_evaluates

    exp = config_mod.load(None, {"strategy.final_model": "best_held_out", "privacy.mode": "local"})
    assert not strategy_evaluates(exp)
    noisy = config_mod.replace(exp, **{"privacy.site_metrics": "noisy"})
    assert strategy_evaluates(noisy)
    assert not strategy_evaluates(config_mod.replace(noisy, **{"strategy.fraction_evaluate": 0.0}))


def test_the_derived_label_set_comes_from_all_training_records_not_the_max_samples_head(tmp_path) -> None:  # noqa: ANN001
    """With data.max_samples the label set was derived from the first N records (here
    only 'a') and then refused the test split's 'b'. Built from a file sorted by label."""
    from server.run import resolve_labels

    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"t{i},{'a' if i < 6 else 'b'}\n" for i in range(12)))
    exp = config_mod.load(None, {"model.name": "bert", "data.source": "csv", "data.path": str(tmp_path / "train.csv"),
                                 "data.max_samples": 4})  # fmt: skip
    assert resolve_labels(exp).data.labels == ("a", "b")
