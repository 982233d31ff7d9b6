"""Local-DP accounting checked against values built by hand, with an independent accountant.

What this proves:
- the epsilon ``train_private`` reports after each of 3 rounds equals the epsilon that Google's
  ``dp_accounting`` (an implementation independent of Opacus) gives for a history written down BY
  HAND from the config alone: sigma as configured, q = 1/ceil(n/B) (Opacus's Poisson rate: the
  expected batch over n), steps = rounds x local_epochs x ceil(n/B). Neither Opacus's record nor
  the ledger is used to build the expectation. RDP is compared with dp_accounting's RDP accountant,
  Confide's 'prv' with dp_accounting's PLD accountant;
- the ledger's committed entries are exactly those hand-built (sigma, q, steps), one per round;
- calibration to privacy.target_epsilon over R rounds spends at most the target, within 1%, as the
  independent accountant measures it on the hand-built history (so a sigma calibrated for one
  round instead of R, or for the wrong q, fails);
- delta: the default is min(1e-5, 1/(10 n)); a delta >= 1/n is refused naming 'privacy.delta';
  ``epsilon()`` refuses delta outside (0, 1) and delta >= 1/n, and never returns a negative number.

Tolerances (stated where used): RDP within 1% (observed ~0.06%: the two libraries use different
grids of Renyi orders, and compute fractional orders by different series, dp_accounting dropping
orders 1.1-1.7 whose series does not converge; the RDP -> (epsilon, delta) conversion is the same
bound in both); PRV vs PLD within 2% (observed ~0.2-0.4%: both numerically approximate the same
privacy curve, PRV with an eps_error of 0.01, PLD with a 1e-4 discretization).

Central (site-level) DP is tested elsewhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld, rdp
from torch import nn

from common import config as config_mod
from common.batches import make_dataset
from common.data import RawData
from common.errors import ConfigError, PrivacyError
from common.privacy.governance.dpsgd import plan_round, site_delta, train_private
from common.privacy.governance.ledger import Ledger
from common.privacy.governance.policy import SIMULATION
from common.privacy.mechanism.accounting import calibrate, calibrate_rest, default_delta, epsilon

pytestmark = pytest.mark.unit

# The tiny site: n = 50 records, batch 12 -> ceil(50/12) = 5 batches per epoch, so Opacus's Poisson
# rate is q = 1/5 = 0.2 (NOT B/n = 0.24), and 2 local epochs are 2 x 5 = 10 steps per round.
N, BATCH, EPOCHS, ROUNDS, SIGMA = 50, 12, 2, 3, 1.1
HAND_Q = 1 / 5
HAND_STEPS = 10
HAND_DELTA = 1e-5  # min(1e-5, 1/(10 * 50)) = min(1e-5, 2e-3)
RDP_TOL, PRV_TOL = 0.01, 0.02


def exp_config(**kw: object) -> config_mod.ExperimentConfig:
    base = {
        "privacy.mode": "local",
        "privacy.noise_multiplier": SIGMA,
        "train.batch_size": BATCH,
        "train.local_epochs": EPOCHS,
        "train.optimizer": "sgd",
        "train.lr": 0.05,
        "strategy.rounds": ROUNDS,
    }
    return config_mod.load(None, {**base, **kw})


def site_data(exp: config_mod.ExperimentConfig, n: int = N):
    rng = np.random.default_rng(0)
    raw = RawData(labels=np.arange(n) % 2, images=rng.integers(0, 255, (n, 1, 8, 8), np.uint8))
    return make_dataset(raw, exp.model)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))


def train_rounds(exp: config_mod.ExperimentConfig, path: Path, rounds: int) -> list:
    """``rounds`` rounds of train_private at one site; the RoundPrivacy of each."""
    model, data, stats = tiny_model(), site_data(exp), []
    for rnd in range(1, rounds + 1):
        _, st = train_private(
            model, data, exp.train, exp.privacy, rounds=exp.strategy.rounds, ledger=Ledger.open(path),
            policy=SIMULATION, site="s", run="r1", server_round=rnd,
        )  # fmt: skip
        stats.append(st)
    return stats


def independent_epsilon(history: list[tuple[float, float, int]], delta: float, kind: str) -> float:
    """Google dp_accounting: RDP ('rdp') or PLD (to compare with Confide's 'prv')."""
    acc = rdp.RdpAccountant() if kind == "rdp" else pld.PLDAccountant()
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, steps in history:  # (sigma, q, k1), (sigma, q, k2) -> (sigma, q, k1 + k2): one compose
        merged[(sigma, q)] = merged.get((sigma, q), 0) + steps
    for (sigma, q), steps in merged.items():
        sampled = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        acc.compose(dp_accounting.SelfComposedDpEvent(sampled, steps))
    return float(acc.get_epsilon(delta))


def rel(a: float, b: float) -> float:
    return abs(a - b) / b


@pytest.mark.parametrize(("kind", "rounds"), [("rdp", ROUNDS), ("prv", 2)])  # PRV accounting is slow: 2 rounds
def test_reported_epsilon_matches_an_independent_accountant_on_a_hand_built_history(
    tmp_path: Path, kind: str, rounds: int
) -> None:
    exp = exp_config(**{"privacy.accountant": kind})
    path = tmp_path / "ledger.json"
    stats = train_rounds(exp, path, rounds)
    tol = RDP_TOL if kind == "rdp" else PRV_TOL
    for rnd, st in enumerate(stats, start=1):
        hand = [(SIGMA, HAND_Q, HAND_STEPS)] * rnd  # rounds x local_epochs x ceil(n/B) steps in all
        expected = independent_epsilon(hand, HAND_DELTA, kind)
        assert rel(st.epsilon, expected) <= tol, (rnd, st.epsilon, expected)
        assert st.delta == HAND_DELTA and st.noise_multiplier == SIGMA
        assert st.sample_rate == pytest.approx(HAND_Q, rel=1e-12) and st.steps == HAND_STEPS
    assert all(a.epsilon < b.epsilon for a, b in zip(stats, stats[1:]))
    entries = Ledger.open(path).entries
    assert [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries] == [
        (SIGMA, pytest.approx(HAND_Q, rel=1e-12), HAND_STEPS)
    ] * rounds
    assert [e["status"] for e in entries] == ["committed"] * rounds
    assert [e["round"] for e in entries] == list(range(1, rounds + 1))


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_calibrated_noise_spends_at_most_the_target_by_an_independent_accountant(tmp_path: Path, kind: str) -> None:
    """sigma is calibrated at the site for all R rounds; R rounds of (sigma, q, steps) by hand spend
    at most the target, and at least 99% of it (else the noise is needlessly large). RDP: through
    train_private for all R rounds; PRV (whose calibration takes seconds per round): the plan only."""
    target = 3.0
    exp = exp_config(**{"privacy.target_epsilon": target, "privacy.accountant": kind})
    if kind == "rdp":
        stats = train_rounds(exp, tmp_path / "ledger.json", ROUNDS)
        sigma = stats[0].noise_multiplier
        assert all(st.noise_multiplier == sigma for st in stats)  # the same sigma every round
        assert stats[-1].epsilon <= target and rel(stats[-1].epsilon, target) <= 0.01
    else:
        sigma = plan_round(exp.privacy, exp.train, ROUNDS, N).noise_multiplier
    hand = [(sigma, HAND_Q, HAND_STEPS)] * ROUNDS
    independent = independent_epsilon(hand, HAND_DELTA, kind)
    assert independent <= target and rel(independent, target) <= 0.01, independent


@pytest.mark.parametrize(("target", "q", "steps"), [(50.0, 1.0, 4), (1.0, 0.05, 200), (8.0, 0.5, 8)])
def test_calibration_finds_noise_below_and_above_one_within_a_thousandth_of_the_target(
    target: float, q: float, steps: int
) -> None:
    """The search starts at sigma = 1 and halves (first case, sigma ~0.31) or doubles (the others,
    ~3.1 and ~1.2) to bracket the answer: either way the noise spends at most the target and at
    least 99.9% of it, by dp_accounting's RDP accountant."""
    sigma = calibrate.__wrapped__(target, HAND_DELTA, q, steps, "rdp")
    spent = independent_epsilon([(sigma, q, steps)], HAND_DELTA, "rdp")
    assert target * 0.999 <= spent <= target * (1 + 1e-9), (sigma, spent)


def test_default_delta_by_hand() -> None:
    for n, hand in [(1, 1e-5), (10, 1e-5), (10_000, 1e-5), (100_000, 1e-6), (1_000_000, 1e-7), (20_000_000, 5e-9)]:
        assert default_delta(n) == pytest.approx(hand, rel=1e-12), n
    exp = exp_config()
    assert plan_round(exp.privacy, exp.train, ROUNDS, 1_000_000).delta == pytest.approx(1e-7, rel=1e-12)
    assert plan_round(exp.privacy, exp.train, ROUNDS, N).delta == HAND_DELTA


@pytest.mark.parametrize("delta", [1 / N, 0.05, 0.5])
def test_a_delta_of_at_least_one_over_n_is_refused_naming_the_key(delta: float) -> None:
    exp = exp_config(**{"privacy.delta": delta})
    with pytest.raises(ConfigError, match=r"privacy\.delta"):
        plan_round(exp.privacy, exp.train, ROUNDS, N)
    with pytest.raises(ConfigError, match=r"privacy\.delta"):
        site_delta(exp.privacy, N)


def test_a_delta_just_below_one_over_n_is_used_as_given() -> None:
    exp = exp_config(**{"privacy.delta": 0.019})
    assert plan_round(exp.privacy, exp.train, ROUNDS, N).delta == 0.019


def test_epsilon_refuses_vacuous_or_invalid_deltas() -> None:
    history = [(SIGMA, 0.25, 4)]
    # The old code returned epsilon = -0.489 here.
    with pytest.raises(PrivacyError):
        epsilon(history, 0.5, "rdp", n=100)
    for kind in ("rdp", "prv"):
        for delta in (1.0, 1.5, 0.0, -1e-5):
            with pytest.raises(PrivacyError):
                epsilon(history, delta, kind)
        with pytest.raises(PrivacyError):
            epsilon(history, 0.01, kind, n=100)  # delta = 1/n exactly
        assert epsilon(history, 0.0099, kind, n=100) > 0


@pytest.mark.parametrize("kind", ["rdp", "prv"])
@pytest.mark.parametrize("history", [[(1.1, 0.25, 4)], [(20.0, 0.01, 1)], [(0.5, 1.0, 1), (1.0, 0.2, 10)]])
def test_epsilon_is_never_negative(history: list, kind: str) -> None:
    """Deltas up to 0.9 without n (where the old code went negative): a non-negative epsilon, or a
    PrivacyError; never a negative number."""
    for delta in (1e-9, 1e-5, 0.1, 0.5, 0.9):
        try:
            eps = epsilon(history, delta, kind)
        except PrivacyError:
            continue
        assert eps >= 0 and not math.isnan(eps), (delta, eps)


def test_prv_epsilon_refuses_with_a_privacy_error_near_delta_one() -> None:
    with pytest.raises(PrivacyError):
        epsilon([(1.1, 0.25, 4)], 0.999, "prv")


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_a_long_history_of_repeated_rounds_costs_per_mechanism_and_gives_the_same_epsilon(kind: str) -> None:
    """A site that adds one entry a round: 60 entries of two interleaved mechanisms are accounted as
    two (their steps summed), and epsilon equals the independent accountant's on the full history."""
    from common.privacy.mechanism.accounting import grouped

    history = [(SIGMA, HAND_Q, 3), (2.0, 1.0, 1)] * 30
    assert grouped(history) == [(SIGMA, HAND_Q, 90), (2.0, 1.0, 30)]
    tol = RDP_TOL if kind == "rdp" else PRV_TOL
    assert rel(epsilon(history, HAND_DELTA, kind), independent_epsilon(history, HAND_DELTA, kind)) <= tol


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_the_rest_of_a_job_is_calibrated_into_what_its_history_left(kind: str) -> None:
    """A history that spent more than planned: the noise for 3 more blocks is raised so that the
    whole job, by an independent accountant, ends within the target and less than 0.2% below it
    (the stopping rule is 0.1%; the accountants differ slightly); no noise up to the cap is
    enough for a history that already spent the target."""
    spent, block, delta, target = [(1.1, 0.05, 200)] * 2, (0.05, 200), 1e-5, 8.0
    sigma = calibrate_rest(target, delta, spent, block, 3, (1.1, 2.2), kind)
    assert sigma is not None and 1.1 < sigma < 2.2
    whole = spent + [(sigma, *block)] * 3
    assert epsilon(whole, delta, kind) <= target
    assert independent_epsilon(whole, delta, kind) == pytest.approx(target, rel=2e-3)
    assert calibrate_rest(epsilon(spent, delta, kind), delta, spent, block, 1, (1.1, 2.2), kind) is None
