"""The job's simple baseline (common/baseline.py): which one, when, and what it may spend.

What this proves:
- "auto" trains a linear layer on pixels for images and on hashed n-grams for text, with the job's
  data, sites, privacy mode, compression and SecAgg+, and a linear recipe of its own;
- no baseline where it would be wrong or pointless, each with its reason: off, central DP, local DP
  without an assigned share, a model that is the baseline itself;
- the budget split: under local DP the model's rounds run at (1 - share) x target and the
  baseline's at share x target, and the two phases' DP-SGD composed by an independent accountant
  (dp_accounting's RDP, from the planned sigma, q and steps) stay within the job's target;
- a site's target check counts each phase's own DP-SGD only: the baseline's spend never makes the
  model's rounds refuse, yet both are charged in the one ledger;
- asking for a baseline the job cannot have stops with one line naming the key.
"""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from common import baseline
from common import config as config_mod
from common.batches import make_dataset
from common.data import RawData
from common.errors import ConfigError
from common.models import build_model
from common.privacy.governance.dpsgd import plan_round, train_private
from common.privacy.governance.ledger import Ledger
from common.privacy.governance.policy import SIMULATION

pytestmark = pytest.mark.unit

DP = {"privacy.mode": "local", "privacy.target_epsilon": 8.0, "privacy.delta": 1e-5}


def job(**kw: object) -> config_mod.ExperimentConfig:
    return config_mod.load("simulations/configs/default.yaml", dict(kw))


def test_auto_is_pixels_for_images_and_ngrams_for_text() -> None:
    assert baseline.features(job()) == "pixels"
    text = job(**{"model.name": "bert", "data.source": "synthetic_text"})
    assert baseline.features(text) == "ngrams"
    derived = baseline.baseline_experiment(text)
    assert (derived.model.name, derived.model.features, derived.model.feature_scale) == ("linear", "ngrams", 8.0)


def test_the_baseline_keeps_the_jobs_sites_and_pipeline_but_trains_a_linear_layer() -> None:
    exp = job(**{"transport.topk": 0.1, "strategy.name": "fedmedian", "train.lr": 0.001, "strategy.rounds": 4})
    derived = baseline.baseline_experiment(exp, image_size=8)
    assert derived.data == exp.data and derived.transport == exp.transport and derived.secagg == exp.secagg
    assert derived.privacy == exp.privacy and derived.seed == exp.seed
    assert derived.strategy.name == "fedmedian"  # a robust rule stays: a poisoning site would poison it too
    assert derived.strategy.rounds == 4 and derived.baseline.features == "off"
    assert (derived.model.name, derived.model.image_size, derived.train.optimizer) == ("linear", 8, "sgd")
    assert derived.train.lr == baseline.RECIPES["pixels"].lr
    assert baseline.baseline_experiment(job(**{"baseline.lr": 0.5, "baseline.rounds": 7})).train.lr == 0.5
    assert baseline.baseline_experiment(job(**{"baseline.rounds": 7})).strategy.rounds == 7
    assert baseline.baseline_experiment(job(**{"strategy.name": "fedadam"})).strategy.name == "fedavg"
    # the layer the sites build from the derived experiment reads 8x8 images
    model = build_model(derived, 10)
    assert sum(p.numel() for p in model.parameters()) == 64 * 10 + 10


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"baseline.features": "off"}, "baseline.features is off"),
        ({"privacy.mode": "central", "privacy.noise_multiplier": 1.0}, "central"),
        (DP, "baseline.epsilon_share"),
        ({"model.name": "linear", "model.features": "pixels", "model.image_size": 8}, "the baseline itself"),
        ({"strategy.personalize": "head"}, "strategy.personalize"),
    ],
)
def test_no_baseline_where_it_would_be_wrong_or_pointless(overrides: dict, reason: str) -> None:
    exp = job(**overrides)
    assert baseline.features(exp) is None
    assert reason in baseline.why_off(exp)
    assert baseline.model_experiment(exp) == exp


def test_the_budget_split_stays_within_the_jobs_target() -> None:
    exp = job(**DP, **{"baseline.epsilon_share": 0.25, "strategy.rounds": 3})
    model, base = baseline.model_experiment(exp), baseline.baseline_experiment(exp, image_size=8)
    assert model.privacy.target_epsilon == pytest.approx(6.0)
    assert base.privacy.target_epsilon == pytest.approx(2.0)
    n = 400  # a site's records
    events = []
    for phase in (model, base):
        plan = plan_round(phase.privacy, phase.train, phase.strategy.rounds, n)
        step = dp_accounting.PoissonSampledDpEvent(
            plan.sample_rate, dp_accounting.GaussianDpEvent(plan.noise_multiplier)
        )
        events.append(dp_accounting.SelfComposedDpEvent(step, plan.steps * phase.strategy.rounds))
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    total = accountant.get_epsilon(1e-5)
    assert 6.0 < total <= 8.0 * 1.001  # more than the model's share alone, within the job's target


def site_data(n: int):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 1, 8, 8), np.uint8)
    exp = job(**{"model.name": "linear", "model.image_size": 8})
    return make_dataset(RawData(labels=np.arange(n) % 2, images=images), exp.model)


def test_each_phase_meets_its_own_target_in_one_ledger(tmp_path: Path) -> None:
    exp = job(**DP, **{"baseline.epsilon_share": 0.5, "strategy.rounds": 1, "train.batch_size": 10})
    ledger = tmp_path / "site.json"
    base, model_exp = baseline.baseline_experiment(exp, image_size=8), baseline.model_experiment(exp)
    data = site_data(100)
    for phase_exp, phase in ((base, baseline.PHASE), (model_exp, "")):
        layer = build_model(base, 2)  # the same small layer for both: the accounting is the point
        _, stats = train_private(
            layer, data, phase_exp.train, phase_exp.privacy, rounds=1, ledger=Ledger.open(ledger),
            policy=SIMULATION, site="s", run="7", server_round=1, phase=phase,
        )  # fmt: skip
    entries = Ledger.open(ledger).entries
    assert [e.get("phase", "") for e in entries] == [baseline.PHASE, ""]
    # the job's epsilon counts both phases: above either share, within the whole target
    assert 4.0 < stats.epsilon_run <= 8.0 * 1.001


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"baseline.epsilon_share": 0.2}, "baseline.epsilon_share"),
        ({**DP, "privacy.target_epsilon": None, "privacy.noise_multiplier": 1.0, "baseline.epsilon_share": 0.2},
         "baseline.epsilon_share"),
        ({"privacy.mode": "central", "privacy.noise_multiplier": 1.0, "baseline.features": "pixels"},
         "baseline.features"),
        ({"baseline.features": "ngrams"}, "baseline.features"),
        ({"baseline.features": "tfidf"}, "baseline.features"),
        ({"baseline.epsilon_share": 1.0}, "baseline.epsilon_share"),
        ({"baseline.rounds": -1}, "baseline.rounds"),
    ],
)  # fmt: skip
def test_a_baseline_the_job_cannot_have_is_refused_naming_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        job(**overrides)
