"""Differential privacy: accounting is cumulative and matches Opacus recomputed independently,
calibration hits its target, site caps refuse at the right round (also after a restart), DP
model variants build identically, LoRA sends only adapters and head, DP off changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.data import LabelSet, RawData
from common.errors import ConfigError, PolicyRefused
from common.models import build_model
from common.privacy.governance.central import central_plan
from common.privacy.governance.dpsgd import BudgetExceeded, train_private
from common.privacy.governance.ledger import Ledger
from common.privacy.governance.policy import SIMULATION, SitePolicy
from common.privacy.mechanism.accounting import epsilon
from common.privacy.mechanism.model_surgery import dp_compatible, readiness
from common.site import SiteRuntime, SiteSpec, train_round
from common.train import train
from common.weights import exchanged_state, get_weights

pytestmark = pytest.mark.sim  # a calibrated run trains for about a minute of CPU

N = 48  # records per test site


def image_exp(**kw: object) -> config_mod.ExperimentConfig:
    base = {
        "privacy.mode": "local",
        "privacy.noise_multiplier": 1.1,
        "train.batch_size": 12,
        "model.name": "resnet18",
        "strategy.rounds": 3,
    }
    return config_mod.load(None, {**base, **kw})


def images(n: int = N) -> RawData:
    rng = np.random.default_rng(0)
    return RawData(labels=np.arange(n) % 2, images=rng.integers(0, 255, (n, 1, 8, 8), np.uint8))


NO_LIMITS = SIMULATION


def capped(**kw: object) -> SitePolicy:
    import dataclasses

    return dataclasses.replace(SIMULATION, **kw)


def one_round(exp, ledger: Ledger, rnd: int, limits: SitePolicy = NO_LIMITS, run: str = "r1"):
    model = build_model(exp, 2)
    return train_private(
        model,
        make_dataset(images(), exp.model),
        exp.train,
        exp.privacy,
        rounds=exp.strategy.rounds,
        ledger=ledger,
        policy=limits,
        site="s",
        run=run,
        server_round=rnd,
    )


def test_cumulative_epsilon_grows_across_rounds_and_restarts(tmp_path: Path) -> None:
    exp = image_exp()
    path = tmp_path / "ledger.json"
    seen = []
    for rnd in (1, 2):
        _, stats = one_round(exp, Ledger.open(path), rnd)
        seen.append(stats.epsilon)
    # "restart": a new process would reopen the ledger from disk and rebuild the model
    reopened = Ledger.open(path)
    assert len(reopened.entries) == 2
    _, stats = one_round(exp, reopened, 3)
    seen.append(stats.epsilon)
    assert seen[0] < seen[1] < seen[2]
    assert stats.delta == pytest.approx(min(1e-5, 1 / (10 * len(make_dataset(images(), exp.model)))))
    # (the value itself is recomputed independently, from the config, in tests/test_accounting.py)
    assert stats.steps == 4 and stats.sample_rate == pytest.approx(1 / 4)  # ceil(48/12) batches


def test_calibrated_run_ends_within_one_percent_of_target(tmp_path: Path) -> None:
    exp = image_exp(**{"privacy.target_epsilon": 3.0, "strategy.rounds": 3})
    ledger = Ledger.open(tmp_path / "l.json")
    for rnd in (1, 2, 3):
        _, stats = one_round(exp, ledger, rnd)
    assert abs(stats.epsilon - 3.0) / 3.0 <= 0.01
    assert stats.epsilon <= 3.0 * 1.001


def test_budget_cap_refuses_at_the_right_round_and_after_restart(tmp_path: Path) -> None:
    exp = image_exp()
    probe = Ledger(tmp_path / "probe.json")
    e1 = one_round(exp, probe, 1)[1].epsilon
    e2 = one_round(exp, probe, 2)[1].epsilon
    cap = (e1 + e2) / 2  # round 1 fits, round 2 would not
    path = tmp_path / "site.json"
    one_round(exp, Ledger.open(path), 1, capped(max_epsilon=cap))
    with pytest.raises(BudgetExceeded, match=r"site 's' refuses.*above its cap.*rule 'max-epsilon'"):
        one_round(exp, Ledger.open(path), 2, capped(max_epsilon=cap))
    with pytest.raises(BudgetExceeded):  # a restarted site still refuses: the ledger remembers
        one_round(exp, Ledger.open(path), 2, capped(max_epsilon=cap), run="r2")
    assert len(Ledger.open(path).entries) == 1  # refusals spend nothing


def test_site_noise_floor_refuses_a_round_below_it_and_spends_nothing(tmp_path: Path) -> None:
    exp = image_exp(**{"privacy.target_epsilon": 50.0})  # calibrated sigma far below the floor
    with pytest.raises(PolicyRefused, match="rule 'min-noise-multiplier'"):
        one_round(exp, Ledger(tmp_path / "l.json"), 1, capped(min_noise_multiplier=2.0))
    assert not (tmp_path / "l.json").exists()


def test_unreadable_ledger_stops_training(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    path.write_text("{not json")
    with pytest.raises(Exception, match="ledger .*unreadable"):
        Ledger.open(path)


def test_dp_variant_is_identical_on_server_and_sites_and_fixes_resnet() -> None:
    exp = image_exp()
    a, b = build_model(exp, 2), build_model(exp, 2)
    assert list(a.state_dict()) == list(b.state_dict())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in a.modules())
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in a.modules()) == 20
    report = readiness(a, exp.privacy, batch_size=64)
    assert report.unsupported == () and report.grad_sample_mode == "bookkeeping"
    assert report.per_sample_grad_bytes_hooks == 64 * sum(p.numel() for p in a.parameters()) * 4
    _, changes = dp_compatible(build_model(config_mod.load(None, {}), 2))
    assert any("GroupNorm" in c for c in changes) and any("residual" in c for c in changes)


@pytest.mark.parametrize("mode", ["bookkeeping", "ghost", "hooks"])
def test_bert_trains_under_dp_in_every_clipping_mode(tmp_path: Path, mode: str) -> None:
    exp = config_mod.load(
        None,
        {
            "model.name": "bert",
            "data.source": "synthetic_text",
            "model.max_length": 16,
            "privacy.mode": "local",
            "privacy.grad_sample_mode": mode,
            "train.batch_size": 8,
        },
    )
    model = build_model(exp, 2)
    raw = RawData(labels=np.arange(16) % 2, texts=tuple(f"query {i} about my card" for i in range(16)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, stats = train_private(
        model,
        make_dataset(raw, exp.model),
        exp.train,
        exp.privacy,
        rounds=1,
        ledger=Ledger(tmp_path / "l.json"),
        policy=SIMULATION,
        site="s",
        run="r",
        server_round=1,
    )
    assert stats.epsilon > 0 and 0 <= stats.fraction_clipped <= 1 and stats.grad_sample_mode == mode
    assert not torch.equal(before["classifier.weight"], model.state_dict()["classifier.weight"])
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())


def test_lora_exchanges_only_adapters_and_head() -> None:
    exp = config_mod.load(None, {"model.name": "bert", "data.source": "synthetic_text", "model.lora_r": 4})
    model = build_model(exp, 3)
    sent = get_weights(model)
    assert sent and all("lora_" in k or "classifier" in k for k in sent)
    assert any("lora_A" in k for k in sent) and any("classifier" in k for k in sent)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(v.nbytes for v in sent.values()) == trainable * 4
    # 6 layers x (query, value) x (A: r x 384, B: 384 x r) + head (3 x 384 + 3)
    assert trainable == 6 * 2 * (4 * 384 + 384 * 4) + 3 * 384 + 3
    assert set(exchanged_state(model)) == set(sent)


def test_dp_off_reproduces_the_plain_training_path_exactly() -> None:
    exp = config_mod.load(None, {"train.batch_size": 16})
    labels = LabelSet(("0", "1"))
    ds = make_dataset(images(), exp.model)
    via_site = SiteRuntime(SiteSpec("s", 0, 1), build_model(exp, 2), ds, ds, labels)
    train_round(exp, via_site, server_round=3, run_id="r")
    plain = build_model(exp, 2)
    train(plain, make_loader(ds, 16, shuffle=True, seed=exp.seed * 1000 + 3), exp.train)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, via_site.model.state_dict()[k]), k


def test_central_plan_calibration_and_delta() -> None:
    plan = central_plan(config_mod.load(None, {"privacy.mode": "central", "privacy.noise_multiplier": 1.0}))
    assert plan.delta == pytest.approx(1e-5) and plan.num_sites == 3
    target = central_plan(
        config_mod.load(
            None,
            {"privacy.mode": "central", "privacy.target_epsilon": 8.0, "privacy.delta": 1e-3, "strategy.rounds": 5},
        )
    )
    assert abs(target.epsilon_after(5) - 8.0) / 8.0 <= 0.01 and target.epsilon_after(5) <= 8.0
    with pytest.raises(ConfigError, match=r"privacy.delta.*1/n = 1/3"):  # delta >= 1/num_sites: vacuous
        central_plan(config_mod.load(None, {"privacy.mode": "central", "privacy.delta": 0.34}))


def test_privacy_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="privacy.noise_multiplier"):
        config_mod.load(None, {"privacy.mode": "local", "privacy.noise_multiplier": 0.0})
    with pytest.raises(ConfigError, match="privacy.mode"):
        config_mod.load(None, {"privacy.mode": "both"})
    with pytest.raises(ConfigError, match="model.lora_r"):
        config_mod.load(None, {"model.lora_r": 4})  # resnet has no LoRA
    with pytest.raises(ConfigError, match="privacy.clipping.*adaptive"):
        config_mod.load(None, {"privacy.mode": "central", "privacy.clipping": "adaptive"})


def test_history_epsilon_is_zero_without_training() -> None:
    assert epsilon([], 1e-5) == 0.0


def test_site_metrics_follow_the_job_and_withhold_by_default(tmp_path: Path) -> None:
    """Under local DP the default releases nothing derived from records: weight 1, no loss, no clip
    fraction, no count; 'exact' releases them; 'noisy' charges one more Gaussian release to the
    ledger and sends a noisy count."""
    labels = LabelSet(("0", "1"))
    seen = {}
    for how in ("withhold", "noisy", "exact"):
        exp = image_exp(**{"privacy.site_metrics": how, "privacy.ledger_dir": str(tmp_path / how)})
        ds = make_dataset(images(), exp.model)
        rt = SiteRuntime(SiteSpec("s", 0, 1), build_model(exp, 2), ds, ds, labels)
        seen[how] = train_round(exp, rt, server_round=1, run_id="r")
    assert seen["withhold"]["weight"] == 1.0
    assert not {"train_loss", "fraction_clipped", "num-examples"} & set(seen["withhold"])
    assert not {"train_loss", "fraction_clipped", "num-examples"} & set(seen["noisy"])
    assert seen["noisy"]["weight"] != float(N) and seen["noisy"]["epsilon"] > seen["withhold"]["epsilon"]
    assert seen["exact"]["num-examples"] == N and {"train_loss", "fraction_clipped"} <= set(seen["exact"])
    kinds = [e["kind"] for e in Ledger.open(tmp_path / "noisy" / "builtin-digits" / "s.json").entries]
    assert kinds == ["dpsgd", "release:count"]
