"""What a DP-SGD job will do at each site, computed before it runs (``confide plan``).

Every figure comes from the code the sites run: the sample rate, steps and noise multiplier from
``dpsgd.plan_round`` (the same calibration against ``privacy.target_epsilon``), epsilon from
``accounting.epsilon`` over the same history the site's ledger will hold. Nothing is released or
written: a plan is arithmetic on the config and the site's record count.

The verdict compares the noise on the averaged gradient with the project's measured runs
(docs/benchmarks.md; docs/privacy.md, "Planning a DP job"). The per-coordinate noise
``sigma * C / B`` alone does not tell them apart: ResNet-20 on PneumoniaMNIST collapsed to the
majority class at sigma*C/B = 0.0045 while the linear scattering model learned at 0.0095. What
does is the noise's norm over all ``d`` trained weights relative to the clip norm,
``sigma * sqrt(d) / B`` (the clipped signal's norm is at most C, the noise's is
sigma * C * sqrt(d) / B): below 1 in every run that learned close to its non-private accuracy,
2.3 or more in every run that collapsed or swung near the majority class.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from common.config import ExperimentConfig, PrivacyConfig, TrainConfig
from common.privacy.governance.dpsgd import RoundPlan, plan_round
from common.privacy.mechanism.accounting import epsilon


@dataclass(frozen=True)
class Reference:
    """A measured run: its noise ratio (record-weighted over its sites) and what it reached."""

    run: str
    ratio: float
    outcome: str


# Ratios computed with this planner from each run's config (docs/privacy.md lists the commands).
REFERENCES = (
    Reference("PneumoniaMNIST, linear on scattering features, eps 8, B 128", 0.86, "learned: 0.732 (no DP 0.801)"),
    Reference("BANKING77, MiniLM head only, eps 8, B 128", 0.96, "learned: 0.798 (no DP 0.894)"),
    Reference("PneumoniaMNIST, ResNet-20, AdamW, eps 8, B 256", 2.35, "collapsed to the majority class (0.625)"),
    Reference("PneumoniaMNIST, ResNet-8, SGD lr 1.0, eps 8, B 128", 2.46, "0.769, swinging 0.62-0.77 by round"),
)
# At or below: the range where the measured runs learned. At or above: where they collapsed or
# swung near the majority class.
LEARNED_MAX = 1.0
COLLAPSED_MIN = 2.3
EPSILON_GRID = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0)


@dataclass(frozen=True)
class SitePlan:
    site: str
    records: int  # training records n (after the held-out split)
    batch: int  # expected Poisson batch B
    rounds: int
    round_plan: RoundPlan
    max_grad_norm: float
    epsilons: tuple[tuple[int, float], ...]  # (round, cumulative epsilon of this job after it)
    trainable: int | None  # weights DP-SGD noises (None: model not built)

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on each coordinate of the averaged gradient."""
        return self.round_plan.noise_multiplier * self.max_grad_norm / self.batch

    @property
    def noise_ratio(self) -> float | None:
        """Norm of the noise on the averaged gradient over the clip norm: sigma * sqrt(d) / B."""
        if self.trainable is None:
            return None
        return self.round_plan.noise_multiplier * math.sqrt(self.trainable) / self.batch


@dataclass(frozen=True)
class Verdict:
    level: str  # "learns", "between", "collapses", "unknown"
    ratio: float | None
    lines: tuple[str, ...]


def marks(rounds: int) -> list[int]:
    """Rounds after which epsilon is shown: every round up to 10, else 1, 25%, 50%, 75%, 100%."""
    if rounds <= 10:
        return list(range(1, rounds + 1))
    return sorted({1, *(max(1, math.ceil(rounds * f)) for f in (0.25, 0.5, 0.75)), rounds})


def plan_site(exp: ExperimentConfig, site: str, n: int, trainable: int | None = None) -> SitePlan:
    """The plan a site with ``n`` training records will compute, and its epsilon round by round."""
    rounds = exp.strategy.rounds
    plan = plan_round(exp.privacy, exp.train, rounds, n)
    acc = exp.privacy.accountant
    eps = tuple(
        (r, epsilon([(plan.noise_multiplier, plan.sample_rate, plan.steps * r)], plan.delta, acc, n))
        for r in marks(rounds)
    )
    return SitePlan(site, n, exp.train.batch_size, rounds, plan, exp.privacy.max_grad_norm, eps, trainable)


def weighted_ratio(plans: list[SitePlan]) -> float | None:
    """The sites' noise ratios weighted by their records, as FedAvg weights their updates."""
    known = [p for p in plans if p.noise_ratio is not None]
    if not known:
        return None
    return sum(p.records * p.noise_ratio for p in known) / sum(p.records for p in known)  # type: ignore[operator]


def epsilon_to_learn(exp: ExperimentConfig, records: list[int], trainable: int) -> float | None:
    """The smallest epsilon on ``EPSILON_GRID`` at which this recipe's ratio falls to ``LEARNED_MAX``
    (the ratio only falls as epsilon grows, so the grid is bisected)."""

    def ratio(eps: float) -> float:
        cfg = dataclasses.replace(exp.privacy, target_epsilon=eps)
        sigma = {n: plan_round(cfg, exp.train, exp.strategy.rounds, n).noise_multiplier for n in set(records)}
        return sum(n * sigma[n] for n in records) * math.sqrt(trainable) / (exp.train.batch_size * sum(records))

    lo, hi = 0, len(EPSILON_GRID) - 1
    if ratio(EPSILON_GRID[hi]) > LEARNED_MAX:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ratio(EPSILON_GRID[mid]) <= LEARNED_MAX else (mid + 1, hi)
    return EPSILON_GRID[lo]


def recipe_for(exp: ExperimentConfig) -> str:
    """The recipe whose noise ratio the measured runs put in the learning range, for this data."""
    if exp.data.is_text:
        return (
            "model.name: linear with model.features: encoder (simulations/configs/banking77_linear_encoder.yaml), "
            "or the head-only MiniLM recipe (train.head_only_rounds >= strategy.rounds, "
            "simulations/sweeps/utility-banking77-head.yaml)"
        )
    return (
        "model.name: linear with model.features: scatter or pixels (simulations/configs/pneumonia_linear_scatter.yaml)"
    )


def verdict(exp: ExperimentConfig, plans: list[SitePlan]) -> Verdict:
    ratio = weighted_ratio(plans)
    if ratio is None:
        return Verdict("unknown", None, ("no verdict: the model could not be built here to count its weights",))
    d = next(p.trainable for p in plans if p.trainable is not None)
    head = (
        f"noise norm / clip norm sigma*sqrt(d)/B = {ratio:.2f} (d = {d:,} trained weights, record-weighted "
        f"over the sites); measured runs learned at <= {LEARNED_MAX:g} and collapsed or fell far behind "
        f"at >= {COLLAPSED_MIN:g} (docs/privacy.md, 'Planning a DP job')"
    )
    if ratio <= LEARNED_MAX:
        return Verdict("learns", ratio, (head, "verdict: in the range where measured runs learned"))
    level = "collapses" if ratio >= COLLAPSED_MIN else "between"
    what = (
        "in the range where measured runs collapsed to the majority class or fell far behind"
        if level == "collapses"
        else "between the measured ranges: runs near it ranged from learning slowly to collapsing"
    )
    lines = [head, f"verdict: {what}"]
    if exp.model.name != "linear":  # a linear job is already the recipe with the least noise per weight
        lines.append(f"a recipe that fits this budget: {recipe_for(exp)}")
    else:
        lines.append("what lowers it: fewer features (pixels, not scatter), a larger expected batch, more epsilon")
    eps = epsilon_to_learn(exp, [p.records for p in plans], d)
    if eps is None:
        lines.append(f"this recipe stays above {LEARNED_MAX:g} at every epsilon up to {EPSILON_GRID[-1]:g}")
    else:
        lines.append(
            f"this recipe falls to {LEARNED_MAX:g} at epsilon {eps:g} (grid {', '.join(map(_g, EPSILON_GRID))})"
        )
    return Verdict(level, ratio, tuple(lines))


def probe_clipping(model: Any, dataset: Any, train_cfg: TrainConfig, cfg: PrivacyConfig, plan: RoundPlan) -> float:
    """Fraction of per-sample gradient norms above C in a short DP-SGD run of ``model`` on
    ``dataset`` (``train_cfg.max_steps`` steps): the sites' own round, engine and clip counter, on
    a throwaway model and with no ledger. The fraction stays on this machine."""
    from common.privacy.governance.dpsgd import _train_round

    _, _, clip = _train_round(model, dataset, train_cfg, cfg, plan, 0.0, None)
    return clip.fraction()


def _g(x: float) -> str:
    return f"{x:g}"
