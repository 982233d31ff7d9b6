"""A site's one privacy entry point (common/privacy/governance/site_privacy.py) decides what a round
costs and what its reply carries:
- without local DP, a central-DP round's entry (and a noisy count) is charged BEFORE training: a
  round past the site's cap is refused with the training never started and the model untouched;
- under local DP the round is DP-SGD: the reply carries its DP metrics and the ledger holds the
  DP-SGD entry tagged with the round's run, round, delta and phase;
- a noisy evaluation release is charged before anything is evaluated, and refused past the cap
  with nothing evaluated;
- a metric privacy.site_metrics does not allow is absent from the Release.

A linear model on 8x8 pixels, 48 in-memory records, one step a round: no Ray, no files but the
ledger in a temporary folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.data import RawData
from common.errors import PolicyRefused
from common.models import build_model
from common.privacy.governance.ledger import Ledger
from common.privacy.governance.policy import SIMULATION, SitePolicy
from common.privacy.governance.site_privacy import Release, SitePrivacy
from common.train import TrainResult, train

pytestmark = pytest.mark.unit

RECORDS = 48
DP_METRICS = {"noise_multiplier", "max_grad_norm", "sample_rate", "steps", "delta", "epsilon", "epsilon_run"}


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFIDE_FEATURE_CACHE", "off")


def job(**keys: object) -> config_mod.ExperimentConfig:
    base = {"model.name": "linear", "model.features": "pixels", "model.image_size": 8, "data.source": "digits"}
    return config_mod.load(None, {**base, "train.max_steps": 1, "train.batch_size": 16, **keys})


def dataset(exp: config_mod.ExperimentConfig) -> torch.utils.data.Dataset:
    rng = np.random.default_rng(0)
    raw = RawData(labels=np.arange(RECORDS) % 2, images=rng.integers(0, 255, (RECORDS, 1, 8, 8), np.uint8))
    return make_dataset(raw, exp.model)


def site(exp: config_mod.ExperimentConfig, tmp_path: Path, policy: SitePolicy = SIMULATION) -> SitePrivacy:
    return SitePrivacy(exp, policy, "s", tmp_path / "s.json", RECORDS)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def kinds(path: Path) -> list[str]:
    return [e["kind"] for e in Ledger.open(path).entries] if path.exists() else []


def test_a_central_round_is_charged_before_training_and_refused_past_the_cap(tmp_path: Path) -> None:
    """Central DP, sigma 10, cap 0.6: two rounds fit (epsilon 0.546), the third is refused (0.680);
    each round's entry is in the ledger when its training starts, and the refused round never starts it."""
    exp = job(**{"privacy.mode": "central", "privacy.noise_multiplier": 10.0, "model.norm": "group"})
    ds = dataset(exp)
    model = build_model(exp, 2)
    privacy = site(exp, tmp_path, dataclasses.replace(SIMULATION, max_epsilon=0.6))
    seen: list[list[str]] = []

    def train_plain() -> TrainResult:
        seen.append(kinds(privacy.ledger_path))
        return train(model, make_loader(ds, exp.train.batch_size, shuffle=True), exp.train)

    for rnd in range(1, 3):
        done = privacy.train_round(model, ds, train_plain, server_round=rnd, run_id="1")
        assert done.charged == ("central",)
        assert set(done.metrics) == {"weight"} and done.metrics["weight"] == 1.0  # withheld by default
    assert seen == [["central"] * k for k in range(1, 3)]  # charged before each round's training
    entries = Ledger.open(privacy.ledger_path).entries
    assert [(e["run"], e["round"], e["noise_multiplier"], e["steps"]) for e in entries] == [
        ("1", k, 10.0, 1) for k in range(1, 3)
    ]
    before = snapshot(model)
    with pytest.raises(PolicyRefused, match=r"answer this round: .* from 0\.546 to 0\.680, above its cap 0\.6"):
        privacy.train_round(model, ds, train_plain, server_round=3, run_id="1")
    assert len(seen) == 2 and unchanged(model, before)
    assert kinds(privacy.ledger_path) == ["central"] * 2


def test_a_noisy_count_is_charged_with_the_central_entry(tmp_path: Path) -> None:
    exp = job(**{"privacy.mode": "central", "privacy.noise_multiplier": 10.0, "privacy.site_metrics": "noisy"})
    ds, model = dataset(exp), build_model(exp, 2)
    privacy = site(exp, tmp_path)
    done = privacy.train_round(model, ds, lambda: TrainResult(0.5, RECORDS, 1, 0.1), server_round=2, run_id="r")
    assert done.charged == ("central", "release:count") and set(done.metrics) == {"weight"}
    entries = Ledger.open(privacy.ledger_path).entries
    assert [(e["kind"], e["run"], e["round"]) for e in entries] == [("central", "r", 2), ("release:count", "r", 2)]
    assert entries[1]["noise_multiplier"] == exp.privacy.release_noise_multiplier
    assert {e["delta"] for e in entries} == {1e-5}  # min(1e-5, 1/(10 n)) for 48 records


def test_a_local_dp_round_returns_its_dp_metrics_and_tags_its_ledger_entry(tmp_path: Path) -> None:
    exp = job(**{"privacy.mode": "local", "privacy.noise_multiplier": 1.0, "privacy.site_metrics": "exact"})
    ds, model = dataset(exp), build_model(exp, 2)
    privacy = site(exp, tmp_path)
    before = snapshot(model)

    def train_plain() -> TrainResult:
        raise AssertionError("local DP never trains outside DP-SGD")

    done = privacy.train_round(model, ds, train_plain, server_round=3, run_id="r", phase="baseline")
    assert isinstance(done, Release) and done.charged == ("dpsgd",)
    assert DP_METRICS | {"fraction_clipped", "train_loss", "weight"} <= set(done.metrics)
    assert done.metrics["noise_multiplier"] == 1.0 and done.metrics["epsilon"] > 0
    assert not unchanged(model, before)
    (entry,) = Ledger.open(privacy.ledger_path).entries
    assert entry["kind"] == "dpsgd" and entry["noise_multiplier"] == 1.0
    assert (entry["run"], entry["round"], entry["phase"], entry["delta"]) == ("r", 3, "baseline", 1e-5)


@pytest.mark.parametrize("level", ["withhold", "noisy", "exact"])
def test_metrics_the_job_does_not_allow_are_absent_from_the_release(tmp_path: Path, level: str) -> None:
    exp = job(**{"privacy.mode": "local", "privacy.noise_multiplier": 1.0, "privacy.site_metrics": level})
    ds, model = dataset(exp), build_model(exp, 2)
    done = site(exp, tmp_path).train_round(model, ds, lambda: TrainResult(0, 0, 0, 0), server_round=1, run_id="r")
    exact = {"num-examples", "train_loss", "train_steps", "train_seconds", "fraction_clipped"}
    assert set(done.metrics) == DP_METRICS | {"weight"} | (exact if level == "exact" else set())
    assert done.charged == (("dpsgd", "release:count") if level == "noisy" else ("dpsgd",))
    if level == "withhold":
        assert done.metrics["weight"] == 1.0


def test_a_noisy_evaluation_is_charged_before_anything_is_evaluated(tmp_path: Path) -> None:
    """The evaluation entry is in the ledger before the model sees a held-out record; past the cap
    the evaluation is refused with no forward pass and nothing run before the release (sigma 10:
    one release spends epsilon 0.375, two 0.546; cap 0.45)."""
    exp = job(**{"privacy.mode": "local", "privacy.noise_multiplier": 1.0, "privacy.site_metrics": "noisy"})
    ds, model = dataset(exp), build_model(exp, 2)
    forwards: list[list[str]] = []
    privacy = site(exp, tmp_path, dataclasses.replace(SIMULATION, max_epsilon=0.45))
    model.register_forward_hook(lambda *_: forwards.append(kinds(privacy.ledger_path)))
    loader = make_loader(ds, exp.train.eval_batch_size, shuffle=False)
    done = privacy.evaluate_round(model, loader, 2, server_round=1, run_id="r")
    assert done.charged == ("release:evaluation",)
    assert forwards and all(seen == ["release:evaluation"] for seen in forwards)
    assert set(done.metrics) == {"weight", "num-examples-noisy", "accuracy", "loss"}
    (entry,) = Ledger.open(privacy.ledger_path).entries
    assert (entry["run"], entry["round"], entry["noise_multiplier"]) == ("r", 1, exp.privacy.release_noise_multiplier)

    forwards.clear()
    ran: list[bool] = []
    with pytest.raises(PolicyRefused, match="refuses to release metrics"):
        privacy.evaluate_round(
            model, loader, 2, server_round=2, run_id="r", before_release=lambda: ran.append(True) or {}
        )
    assert forwards == [] and ran == [] and kinds(privacy.ledger_path) == ["release:evaluation"]


def test_extras_run_before_the_release_and_are_released_beside_it(tmp_path: Path) -> None:
    """Without DP (everything exact, nothing charged) the site's personalisation step runs before the
    evaluation, so the released evaluation is of the model it leaves."""
    exp = job()
    ds, model = dataset(exp), build_model(exp, 2)
    privacy = site(exp, tmp_path)
    assert privacy.without_dp and privacy.level == "exact"

    def favour_class_one() -> dict[str, float]:  # stands for the site's fine-tuning
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([0.0, 10.0]))
        return {"local_only_accuracy": 0.25}

    loader = make_loader(ds, exp.train.eval_batch_size, shuffle=False)
    done = privacy.evaluate_round(model, loader, 2, server_round=1, run_id="r", before_release=favour_class_one)
    assert done.charged == () and not privacy.ledger_path.exists()
    assert done.metrics["local_only_accuracy"] == 0.25
    # the model it left: every record called class 1, half wrong by a margin of 10
    assert done.metrics["accuracy"] == 0.5 and done.metrics["loss"] == pytest.approx(5.0, abs=1e-3)
    assert {"weight", "num-examples", "loss", "accuracy", "macro_f1"} <= set(done.metrics)
