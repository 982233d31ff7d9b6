"""One round of DP-SGD at a site, accounted in the site's ledger before and after.

The round is planned (noise multiplier, sample rate, steps, delta) from the job and the site's
record count; the site's policy checks the plan; the ledger reserves the round's spend (refusing
it if the site's cumulative epsilon would pass its cap); Opacus and the chosen clipping engine
train; the ledger commits what Opacus's accountant actually recorded.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.augment import Augmenter
from common.batches import Batch, make_loader
from common.class_weight import check_width, explicit_tensor
from common.config import PrivacyConfig, TrainConfig
from common.device import model_device, on_model_device
from common.errors import PolicyRefused
from common.privacy.governance.ledger import Ledger, history_of
from common.privacy.governance.policy import SitePolicy
from common.privacy.mechanism.accounting import calibrate, calibrate_rest, check_delta, default_delta, epsilon
from common.privacy.mechanism.clipping import PrivateStep, choose_mode, make_private
from common.privacy.mechanism.randomness import secret_generator
from common.train import PhysicalBatches, TrainResult, logits, make_optimizer, planned_steps, train

log = logging.getLogger(__name__)


# Calibration hits the target within 0.1% (common/privacy/mechanism/accounting.py); Poisson rounding of the
# sample rate (batches_per_epoch) can add a little more.
TARGET_SLACK = 0.01
# At most this multiple of the planned noise to keep a job within its target after it spent more than
# planned: updates with more noise than that mostly add noise to the global model, so the round is refused.
MAX_NOISE_RAISE = 2.0


class BudgetExceeded(PolicyRefused):
    """A site refuses a round that would take it past its own epsilon cap."""


@dataclass(frozen=True)
class RoundPlan:
    noise_multiplier: float
    sample_rate: float  # 1 / batches per epoch: what Opacus's Poisson loader uses
    steps: int
    delta: float
    records: int


@dataclass(frozen=True)
class RoundPrivacy:
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float  # cumulative for the site after this round (every entry of its ledger)
    epsilon_run: float  # spent in this run so far
    fraction_clipped: float  # derived from per-sample gradients: released only where allowed
    grad_sample_mode: str

    def as_metrics(self, with_clip_fraction: bool) -> dict[str, float]:
        skip = {"grad_sample_mode"} | (set() if with_clip_fraction else {"fraction_clipped"})
        return {k: float(v) for k, v in asdict(self).items() if k not in skip}


def site_delta(cfg: PrivacyConfig, n: int) -> float:
    return check_delta(cfg.delta or default_delta(n), n, "privacy.delta", "n: the site's training records")


def batches_per_epoch(train_cfg: TrainConfig, n: int) -> int:
    """Poisson batches per epoch as Opacus's DP loader counts them: sample rate 1/ceil(n/B), and
    int(1 / rate) batches, which floating point makes one fewer for some sizes (93 -> 92); its
    accountant then records rate 1/92 for them, a valid upper bound of the true 1/93."""
    return int(1 / (1 / math.ceil(n / train_cfg.batch_size)))


def plan_round(cfg: PrivacyConfig, train_cfg: TrainConfig, rounds: int, n: int, accountant: str = "") -> RoundPlan:
    """This round's DP-SGD parameters: configured noise, or calibrated so that ``rounds`` such
    rounds spend ``privacy.target_epsilon`` in total under ``accountant`` (the site's; "" = the job's)."""
    batches = batches_per_epoch(train_cfg, n)
    steps = train_cfg.local_epochs * batches
    steps = min(steps, train_cfg.max_steps) if train_cfg.max_steps else steps
    q, delta = 1.0 / batches, site_delta(cfg, n)
    sigma = cfg.noise_multiplier
    if cfg.target_epsilon is not None:
        sigma = calibrate(cfg.target_epsilon, delta, q, rounds * steps, accountant or cfg.accountant)
    return RoundPlan(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, records=n)


def _entry(sigma: float, q: float, steps: int, kind: str, **tags: Any) -> dict[str, Any]:
    return {"noise_multiplier": float(sigma), "sample_rate": float(q), "steps": int(steps), "kind": kind, **tags}


def cap_check(policy: SitePolicy, delta: float, accountant: str, n: int, site: str, what: str):
    """The ledger check that refuses a spend taking the site's cumulative epsilon past its cap, or
    one accounted with another accountant than the ledger's entries (the site's epsilon would jump)."""

    def check(existing: list[dict[str, Any]], planned: list[dict[str, Any]]) -> None:
        others = sorted({str(e["accountant"]) for e in existing if e.get("accountant", accountant) != accountant})
        if others:
            raise PolicyRefused(
                f"site '{site}' refuses to {what} with the {accountant} accountant: its ledger is accounted with "
                f"{', '.join(others)} (privacy.accountant, or the site policy's 'accountant'); one ledger, one "
                "accountant, so its epsilon never moves backwards"
            )
        projected = epsilon(history_of(existing + planned), delta, accountant, n)
        if projected > policy.max_epsilon:
            spent = epsilon(history_of(existing), delta, accountant, n)
            raise BudgetExceeded(
                f"site '{site}' refuses to {what}: this would bring its epsilon from {spent:.3f} to "
                f"{projected:.3f}, above its cap {policy.max_epsilon:g} "
                f"(site policy rule 'max-epsilon', {policy.source})"
            )

    return check


def _of_job(entry: dict[str, Any], run: str, phase: str) -> bool:
    """A DP-SGD entry of this part of this job: what the target calibrates (noisy metric releases are
    charged beside it; the model and its baseline each have their own target)."""
    return entry.get("run") == run and entry.get("kind") == "dpsgd" and entry.get("phase", "") == phase


def within_target(
    plan: RoundPlan, cfg: PrivacyConfig, ledger: Ledger, accountant: str, run: str, rounds_left: int, site: str,
    phase: str = "",
) -> RoundPlan:  # fmt: skip
    """The plan, with its noise raised where this job has already spent more than the plan assumes, so
    that this round and the ``rounds_left`` after it still end within privacy.target_epsilon. That
    happens when a round was trained for a coordinator lost before it recorded the round (the site
    spent it; the resumed job trains that round again), or when strategy.rounds was raised on resume.
    Where that would take more than ``MAX_NOISE_RAISE`` times the planned noise, the plan stands and
    ``target_check`` refuses the round."""
    if cfg.target_epsilon is None:
        return plan
    spent = ledger.history(lambda e: _of_job(e, run, phase))
    blocks = max(rounds_left, 0) + 1
    rest = [(plan.noise_multiplier, plan.sample_rate, plan.steps)] * blocks
    if epsilon(spent + rest, plan.delta, accountant, plan.records) <= cfg.target_epsilon * (1 + TARGET_SLACK):
        return plan
    block = (plan.sample_rate, plan.steps)
    noise_range = (plan.noise_multiplier, plan.noise_multiplier * MAX_NOISE_RAISE)
    sigma = calibrate_rest(cfg.target_epsilon, plan.delta, spent, block, blocks, noise_range, accountant, plan.records)
    if sigma is None:
        return plan
    log.warning(
        "site %s: this job has spent more of privacy.target_epsilon=%g than planned (a round trained for a "
        "coordinator that was lost, or more rounds after a resume); noise multiplier %.3f -> %.3f for this "
        "round and the %d after it, so the job ends within its target",
        site, cfg.target_epsilon, plan.noise_multiplier, sigma, blocks - 1,
    )  # fmt: skip
    return replace(plan, noise_multiplier=sigma)


def target_check(
    cfg: PrivacyConfig, plan: RoundPlan, accountant: str, run: str, rounds_left: int, site: str, phase: str = ""
):
    """With ``privacy.target_epsilon``, refuse a round after which the job could not end within its
    target: this job's entries, this round and ``rounds_left`` more like it (a resume that raised
    strategy.rounds recalibrates the noise for the new total, too late for the rounds already spent)."""

    def check(existing: list[dict[str, Any]], planned: list[dict[str, Any]]) -> None:
        if cfg.target_epsilon is None:
            return
        mine = [e for e in existing + planned if _of_job(e, run, phase)]
        rest = [(plan.noise_multiplier, plan.sample_rate, plan.steps)] * max(rounds_left, 0)
        projected = epsilon(history_of(mine) + rest, plan.delta, accountant, plan.records)
        if projected > cfg.target_epsilon * (1 + TARGET_SLACK):
            raise BudgetExceeded(
                f"site '{site}' refuses to train: this job would reach epsilon {projected:.3f}, above its "
                f"privacy.target_epsilon={cfg.target_epsilon:g}, and {MAX_NOISE_RAISE:g}x the planned noise would "
                "not keep it within (it already spent more than planned: strategy.rounds raised on resume, or "
                "rounds trained for a coordinator that was lost)"
            )

    return check


def charge(
    ledger: Ledger,
    cfg: PrivacyConfig,
    policy: SitePolicy,
    n: int,
    site: str,
    entries: list[dict[str, Any]],
    what: str = "release metrics",
) -> None:
    """Reserve-then-commit a release that is not a training round (e.g. noisy metrics, or its share
    of a central-DP round), each entry tagged with the site's accountant."""
    accountant = policy.accountant_for(cfg)
    entries = [{**e, "accountant": accountant} for e in entries]
    check = cap_check(policy, site_delta(cfg, n), accountant, n, site, what)
    ledger.commit(ledger.reserve(entries, check), entries)


def train_private(
    model: nn.Module,
    dataset: Dataset,
    train_cfg: TrainConfig,
    cfg: PrivacyConfig,
    *,
    rounds: int,
    ledger: Ledger,
    policy: SitePolicy,
    site: str,
    run: str,
    server_round: int,
    releases: list[dict[str, Any]] | None = None,
    proximal_mu: float = 0.0,
    augment: Augmenter | None = None,
    phase: str = "",
) -> tuple[TrainResult, RoundPrivacy]:
    """One round of DP-SGD. ``releases``: ledger entries of metric releases planned for this
    round's reply, reserved (and charged) together with the training. ``proximal_mu``: FedProx's
    term, added after the noise (data-independent: no privacy cost; common/train.py).
    ``augment``: augmentation of each sampled batch; with multiplicity K > 1 each record's K
    per-sample gradients are averaged before clipping (``average_copies``). ``phase``: the part of
    the job ("" its model, "baseline" its baseline), each with its own target epsilon."""
    accountant = policy.accountant_for(cfg)
    plan = plan_round(cfg, train_cfg, rounds, len(dataset), accountant)
    plan = within_target(plan, cfg, ledger, accountant, run, rounds - server_round, site, phase)
    policy.check_round(plan.noise_multiplier, plan.delta)
    tags = {"run": run, "round": server_round, "delta": plan.delta, "max_grad_norm": cfg.max_grad_norm}
    tags["accountant"] = accountant
    if phase:
        tags["phase"] = phase
    planned = [_entry(plan.noise_multiplier, plan.sample_rate, plan.steps, "dpsgd", **tags)]
    planned += [{**r, **tags} for r in releases or []]
    checks = (
        cap_check(policy, plan.delta, accountant, plan.records, site, "train"),
        target_check(cfg, plan, accountant, run, rounds - server_round, site, phase),
    )
    reservation = ledger.reserve(planned, lambda existing, new: [c(existing, new) for c in checks])
    result, recorded, clip = _train_round(model, dataset, train_cfg, replace(cfg, accountant=accountant), plan,
                                          proximal_mu, augment)  # fmt: skip
    actual = [_entry(s, q, k, "dpsgd", **tags) for s, q, k in recorded] + planned[1:]
    ledger.commit(reservation, actual)
    return result, _round_stats(ledger, replace(cfg, accountant=accountant), plan, recorded, clip, run)


def _train_round(
    model: nn.Module,
    dataset: Dataset,
    train_cfg: TrainConfig,
    cfg: PrivacyConfig,
    plan: RoundPlan,
    proximal_mu: float,
    augment: Augmenter | None = None,
) -> tuple[TrainResult, list[tuple[float, float, int]], _ClipCounter]:
    """Opacus + the clipping engine around the plain training loop; returns what Opacus recorded."""
    probe = next(iter(make_loader(dataset, min(4, len(dataset)), shuffle=False)))  # reveals reused modules
    copies = augment.k if augment is not None else 1
    # Averaging a record's copies before clipping needs its copies' gradients: the per-sample engine.
    mode = choose_mode(replace(cfg, grad_sample_mode="hooks") if copies > 1 else cfg, model, probe)
    weights = explicit_tensor(train_cfg.class_weight)
    if weights is not None:
        check_width(weights, _classes(model, probe))
    model.train()
    step = make_private(
        model,
        make_optimizer(model, train_cfg, proximal_mu),
        make_loader(dataset, train_cfg.batch_size, shuffle=True, generator=secret_generator()),
        mode=mode,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=cfg.max_grad_norm,
        accountant=cfg.accountant,
        noise_generator=secret_generator(),
        class_weights=None if weights is None else weights.to(model_device(model)),
    )
    clip = _ClipCounter(step.norms, cfg.max_grad_norm, mode)
    hook = _then(average_copies(model, copies), clip) if copies > 1 else clip
    try:
        bound = cfg.max_physical_batch_size or train_cfg.batch_size
        with physical_batches(step, bound, train_cfg) as (loader, physical):
            result = train(
                model, loader, train_cfg, optimizer=step.optimizer, loss_fn=step.criterion, step_hook=hook,
                augment=augment, empty_step=noise_only_step(step, model), physical=physical,
            )  # fmt: skip
    finally:
        step.close()
    return result, [(float(s), float(q), int(k)) for s, q, k in step.accountant.history], clip


def _classes(model: nn.Module, probe: Batch) -> int:
    """The model's number of classes: one forward pass of ``probe`` in eval mode, nothing trained."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        classes = int(logits(model, on_model_device(probe, model)).shape[-1])
    model.train(was_training)
    return classes


def noise_only_step(step: PrivateStep, model: nn.Module) -> Callable[[], None]:
    """The DP-SGD step of an empty Poisson batch without running the model: a zero clipped sum, then
    Opacus's noise, scaling, accounting and optimizer step, as for any other batch. Per-sample
    gradient engines ('hooks') take zero rows of per-sample gradients; the fast-gradient-clipping
    optimizer (book-keeping, ghost) takes a zero clipped sum in ``.grad``."""
    params = [p for p in model.parameters() if p.requires_grad]

    def run() -> None:
        step.optimizer.zero_grad(set_to_none=True)
        for p in params:
            if step.mode == "hooks":
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            else:
                p.grad = torch.zeros_like(p)
        step.optimizer.step()

    return run


def average_copies(model: nn.Module, k: int) -> Callable[[Batch], None]:
    """Augmentation multiplicity (De et al. 2022): after the backward pass over B records x K
    augmented copies (each record's copies adjacent, common/augment.py), replace the B*K per-sample
    gradients by the B means over each record's copies, before Opacus clips them. Opacus's hooks
    scale per-sample gradients by the batch length for a mean loss, so each row is one copy's own
    gradient, and the mean is the gradient of the record's mean loss over its copies; one record
    still moves the clipped sum by at most the clip norm: the accounting is unchanged."""

    def hook(batch: Batch) -> None:
        for p in model.parameters():
            g = getattr(p, "grad_sample", None)
            if not p.requires_grad or g is None:
                continue
            if not isinstance(g, torch.Tensor) or g.shape[0] % k:
                shape = tuple(getattr(g, "shape", ()))
                raise RuntimeError(f"per-sample gradients of shape {shape} are not {k} copies per record")
            p.grad_sample = g.view(g.shape[0] // k, k, *g.shape[1:]).mean(dim=1)

    return hook


def _then(*hooks: Callable[[Batch], None]) -> Callable[[Batch], None]:
    def run(batch: Batch) -> None:
        for h in hooks:
            h(batch)

    return run


@contextlib.contextmanager
def physical_batches(
    step: PrivateStep, size: int, train_cfg: TrainConfig
) -> Iterator[tuple[DataLoader, PhysicalBatches]]:
    """The private loader split by Opacus's BatchMemoryManager into physical batches of at most
    ``size`` records, and what ``common.train.train`` needs to count its optimizer steps. The
    optimizer accumulates the clipped per-sample gradients and adds noise and steps once per
    sampled (logical) batch, so the DP step and its accounting are unchanged; only peak memory is
    bounded, and steps and ``train.max_steps`` count optimizer steps, not passes."""
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    physical = PhysicalBatches(planned_steps(step.loader, train_cfg), step.stepped)
    with BatchMemoryManager(data_loader=step.loader, max_physical_batch_size=size, optimizer=step.optimizer) as loader:
        yield loader, physical


def _round_stats(
    ledger: Ledger, cfg: PrivacyConfig, plan: RoundPlan, recorded: list, clip: _ClipCounter, run: str
) -> RoundPrivacy:
    n = plan.records
    return RoundPrivacy(
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=cfg.max_grad_norm,
        sample_rate=plan.sample_rate,
        steps=sum(k for _, _, k in recorded),
        delta=plan.delta,
        epsilon=epsilon(ledger.history(), plan.delta, cfg.accountant, n),
        epsilon_run=epsilon(ledger.history(lambda e: e.get("run") == run), plan.delta, cfg.accountant, n),
        fraction_clipped=clip.fraction(),
        grad_sample_mode=clip.mode,
    )


class _ClipCounter:
    """Counts per-sample gradients whose norm exceeds the clip norm (a scalar, released only where allowed)."""

    def __init__(self, norms: Any, max_grad_norm: float, mode: str) -> None:
        self.norms, self.c, self.mode = norms, max_grad_norm, mode
        self.clipped = 0
        self.total = 0

    def __call__(self, batch: Batch) -> None:
        norms = self.norms()
        self.clipped += int((norms > self.c).sum())
        self.total += int(norms.numel())

    def fraction(self) -> float:
        return self.clipped / self.total if self.total else 0.0
