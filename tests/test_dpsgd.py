"""DP-SGD measured, not trusted: the noise, the Poisson batches, the clipped mean, the ledger.

What this proves, for each clipping engine ('bookkeeping', 'ghost', 'hooks') behind ``make_private``:
- noise: on a model whose per-sample gradients are exactly zero, one SGD step (lr 1) moves every
  one of ~20k coordinates by N(0, (sigma C)^2) / (q n): the sample standard deviation is within 5
  standard errors of sigma C / (q n) (the standard error of a sample std of k normals is ~1/sqrt(2k)
  of it, so 5/sqrt(2k) = 2.5% here; a noise multiplier 10% off fails) and the mean within 5
  standard errors of 0;
- sampling: the DP loader's batches are Poisson: over 2000 batches with n=200 and q=0.1 the batch
  size has mean q n and variance n q (1-q) within 5 standard errors, every record is drawn with
  rate q, no record twice in a batch; at tiny q empty batches occur at the rate (1-q)^n;
- clipping: with sigma = 0, each step's gradient equals the per-sample gradients computed BY HAND
  (plain autograd, one record at a time, over the records actually in that Poisson batch), each
  clipped to norm C, summed, and divided by the expected batch size q n (not the batch's size), on
  an MLP with LayerNorm and a small CNN with GroupNorm;
- the ledger holds what was trained: (sigma, q, steps) by hand, committed, nothing left reserved;
  a round the site's epsilon cap refuses raises BudgetExceeded naming 'max-epsilon', trains
  nothing and leaves the ledger file byte for byte as it was.

Defects this file found and that are now fixed: empty Poisson batches (a crash in book-keeping and
hooks; leading ones skipped without noise or accounting) and Opacus's step count per epoch.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp
from torch import nn
from torch.nn import functional as F

from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.data import RawData
from common.errors import PolicyRefused
from common.privacy.governance.dpsgd import BudgetExceeded, plan_round, train_private
from common.privacy.governance.ledger import Ledger
from common.privacy.governance.policy import SIMULATION, SitePolicy
from common.privacy.mechanism.clipping import MODES, make_private
from common.privacy.mechanism.randomness import study_noise_seeds
from common.train import make_optimizer, train

pytestmark = pytest.mark.unit


def exp_config(**kw: object) -> config_mod.ExperimentConfig:
    base = {
        "privacy.mode": "local",
        "privacy.noise_multiplier": 1.0,
        "train.optimizer": "sgd",
        "train.momentum": 0.0,
        "train.lr": 1.0,
    }
    return config_mod.load(None, {**base, **kw})


def site_data(n: int):
    """n 1x8x8 images; pixel (0, 0) encodes the record's index (recovered by ``record_ids``)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 1, 8, 8), np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    return make_dataset(RawData(labels=np.arange(n) % 2, images=images), exp_config().model)


def record_ids(pixels: torch.Tensor) -> list[int]:
    return [int(round(v)) for v in ((pixels[:, 0, 0, 0] + 1) * 127.5).tolist()]


def batch_size(batch) -> int:
    """A Poisson batch's size: Opacus yields an empty batch as a dict of zero-length tensors, or,
    before its first non-empty batch, as a list of zero-length tensors."""
    if isinstance(batch, dict):
        return int(batch["labels"].shape[0])
    assert all(t.shape[0] == 0 for t in batch)
    return 0


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 2)
    )  # fmt: skip


class Times(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def zero_gradient_model() -> nn.Module:
    """Inputs multiplied by 0 and no biases: every per-sample gradient is exactly 0, yet all
    64*312 + 312*2 = 20592 coordinates require grad and go through the engine."""
    return nn.Sequential(nn.Flatten(), Times(0.0), nn.Linear(64, 312, bias=False), nn.Linear(312, 2, bias=False))


def private(model: nn.Module, data, batch: int, mode: str, sigma: float, clip: float, seed: int = 0, lr: float = 1.0):
    exp = exp_config(**{"train.batch_size": batch, "train.lr": lr})
    return make_private(
        model,
        make_optimizer(model, exp.train),
        make_loader(data, batch, shuffle=True, generator=torch.Generator().manual_seed(seed)),
        mode=mode,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        accountant="rdp",
        noise_generator=torch.Generator().manual_seed(seed + 1),
    )


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


# --------------------------------------------------------------------------- noise


@pytest.mark.parametrize("mode", MODES)
def test_noise_has_standard_deviation_sigma_c_over_the_expected_batch(mode: str) -> None:
    n, batch, sigma, clip = 200, 20, 1.3, 0.7  # q = 1/ceil(200/20) = 0.1: expected batch q n = 20
    torch.manual_seed(0)
    model = zero_gradient_model()
    step = private(model, site_data(n), batch, mode, sigma, clip)
    try:
        data = next(b for b in step.loader if batch_size(b) > 0)
        before = flat(model.parameters()).clone()
        step.optimizer.zero_grad(set_to_none=True)
        step.criterion(model(data["pixel_values"]), data["labels"]).backward()
        assert torch.equal(step.norms(), torch.zeros(batch_size(data)))  # the premise: no signal at all
        step.optimizer.step()
    finally:
        step.close()
    grad = flat(p.grad for p in model.parameters())
    change = flat(model.parameters()) - before
    k = grad.numel()
    assert k == 20592
    torch.testing.assert_close(change, -grad, rtol=0, atol=1e-7)  # SGD, lr 1: the step is the noisy gradient
    hand_std = sigma * clip / 20
    std, mean = grad.double().std().item(), grad.double().mean().item()
    assert abs(std / hand_std - 1) <= 5 / math.sqrt(2 * k), (std, hand_std)
    assert abs(mean) <= 5 * hand_std / math.sqrt(k), mean
    # Gaussian, not merely of the right variance: 68.27% of coordinates within one std of 0
    within = (grad.abs() <= hand_std).double().mean().item()
    assert abs(within - 0.6827) <= 5 * math.sqrt(0.6827 * 0.3173 / k), within


# --------------------------------------------------------------------------- Poisson sampling


def test_poisson_batch_sizes_have_binomial_mean_and_variance() -> None:
    n, batch, epochs = 200, 20, 200  # q = 1/ceil(200/20) = 0.1; 200 epochs x 10 batches
    q = 0.1
    step = private(mlp(), site_data(n), batch, "bookkeeping", 1.0, 1.0, seed=3)
    try:
        assert len(step.loader) == 10  # ceil(n/B) batches per epoch: the steps the plan accounts
        sizes, drawn = [], np.zeros(n)
        for _ in range(epochs):
            for b in step.loader:
                sizes.append(batch_size(b))
                if sizes[-1]:
                    ids = record_ids(b["pixel_values"])
                    assert len(set(ids)) == len(ids)  # each record at most once per batch
                    drawn[ids] += 1
    finally:
        step.close()
    sizes = np.array(sizes, dtype=float)
    m = len(sizes)
    assert m == 2000
    mean, var = n * q, n * q * (1 - q)  # Binomial(n, q): 20, 18
    assert abs(sizes.mean() - mean) <= 5 * math.sqrt(var / m), sizes.mean()
    # standard error of a sample variance: sqrt((mu4 - var^2 (m-3)/(m-1)) / m), Binomial mu4 = var (1 + 3 (n-2) q (1-q))
    mu4 = var * (1 + 3 * (n - 2) * q * (1 - q))
    assert abs(sizes.var(ddof=1) - var) <= 5 * math.sqrt((mu4 - var**2 * (m - 3) / (m - 1)) / m), sizes.var(ddof=1)
    # every record is drawn at rate q: Binomial(2000, 0.1) draws each (mean 200, sd 13.4)
    assert np.abs(drawn - m * q).max() <= 5 * math.sqrt(m * q * (1 - q)), drawn.min()


def test_empty_poisson_batches_occur_at_rate_one_minus_q_to_the_n() -> None:
    n, batch, epochs = 20, 1, 100  # q = 1/20: P(empty) = 0.95^20 = 0.358
    step = private(mlp(), site_data(n), batch, "ghost", 1.0, 1.0, seed=5)
    try:
        sizes = [batch_size(b) for _ in range(epochs) for b in step.loader]
    finally:
        step.close()
    p_empty, m = 0.95**20, len(sizes)
    assert m == 2000
    empty = sum(s == 0 for s in sizes) / m
    assert abs(empty - p_empty) <= 5 * math.sqrt(p_empty * (1 - p_empty) / m), empty


# --------------------------------------------------------------------------- clipping


def per_sample_clipped_sum(
    model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, clip: float
) -> tuple[torch.Tensor, int]:
    """By hand: each record's full gradient (plain autograd, one record at a time), clipped to norm
    ``clip``, summed; and how many records were clipped."""
    total, clipped = None, 0
    for x, y in zip(xs, ys):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[None]), y[None]).backward()
        g = flat(p.grad for p in model.parameters())
        norm = g.norm().item()
        clipped += norm > clip
        g = g * min(1.0, clip / norm)
        total = g if total is None else total + g
    return total, clipped


def per_sample_norms(model: nn.Module, data) -> list[float]:
    norms = []
    for i in range(len(data)):
        x, y = data[i]
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[None]), y[None]).backward()
        norms.append(flat(p.grad for p in model.parameters()).norm().item())
    return norms


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", [mlp, cnn], ids=["mlp-layernorm", "cnn-groupnorm"])
def test_noiseless_step_is_the_hand_clipped_sum_over_the_expected_batch(arch, mode: str) -> None:
    n, batch, steps, lr = 40, 8, 3, 1.0  # q = 1/ceil(40/8) = 0.2: expected batch q n = 8
    torch.manual_seed(0)
    model, reference = arch(), arch()
    reference.load_state_dict(model.state_dict())
    data = site_data(n)
    clip = float(np.median(per_sample_norms(reference, data)))  # about half the records get clipped
    exp = exp_config(**{"train.batch_size": batch, "train.lr": lr, "train.max_steps": steps})
    captured = []  # per step: the Poisson batch and the parameters it was computed at

    def hook(b) -> None:
        captured.append((b, [p.detach().clone() for p in model.parameters()]))

    step = private(model, data, batch, mode, sigma=0.0, clip=clip, seed=11, lr=lr)
    try:
        train(model, step.loader, exp.train, optimizer=step.optimizer, loss_fn=step.criterion, step_hook=hook)
    finally:
        step.close()
    assert len(captured) == steps
    after = [flat(p for p in params) for _, params in captured[1:]] + [flat(model.parameters())]
    n_clipped, sizes = 0, []
    for (b, params), following in zip(captured, after):
        with torch.no_grad():
            for p, v in zip(reference.parameters(), params):
                p.copy_(v)
        total, clipped = per_sample_clipped_sum(reference, b["pixel_values"], b["labels"], clip)
        n_clipped, sizes = n_clipped + clipped, sizes + [batch_size(b)]
        hand = total / 8  # divided by the EXPECTED batch size q n, whatever this batch's size
        torch.testing.assert_close((flat(params) - following) / lr, hand, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(flat(p.grad for p in model.parameters()), hand, rtol=1e-4, atol=1e-6)
    # the test can tell clipped from unclipped and sum/expected from mean over the batch
    assert 0 < n_clipped < sum(sizes) and any(s != 8 for s in sizes), (n_clipped, sizes)


# --------------------------------------------------------------------------- ledger


def site_run(tmp_path: Path, policy: SitePolicy = SIMULATION, rnd: int = 1, model: nn.Module | None = None):
    """One train_private round at a 50-record site (batch 12, 2 epochs, sigma 1.1)."""
    exp = exp_config(**{"privacy.noise_multiplier": 1.1, "train.batch_size": 12, "train.local_epochs": 2})
    _, stats = train_private(
        model or mlp(), site_data(50), exp.train, exp.privacy, rounds=3,
        ledger=Ledger.open(tmp_path / "ledger.json"), policy=policy, site="s", run="r", server_round=rnd,
    )  # fmt: skip
    return stats


def hand_epsilon(rounds: int) -> float:
    """dp_accounting RDP of `rounds` rounds of (1.1, 1/ceil(50/12) = 0.2, 2 x 5 = 10 steps), delta 1e-5."""
    acc = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(1.1))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, 10 * rounds))
    return float(acc.get_epsilon(1e-5))


def test_the_ledger_holds_what_was_trained(tmp_path: Path) -> None:
    stats = site_run(tmp_path)
    assert stats.steps == 10 and stats.sample_rate == 0.2 and stats.noise_multiplier == 1.1
    entries = Ledger.open(tmp_path / "ledger.json").entries
    assert [(e["noise_multiplier"], e["sample_rate"], e["steps"], e["status"]) for e in entries] == [
        (1.1, 0.2, 10, "committed")
    ]
    assert entries[0]["kind"] == "dpsgd" and entries[0]["run"] == "r" and entries[0]["round"] == 1


def test_a_round_over_the_cap_is_refused_and_spends_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    one, two = hand_epsilon(1), hand_epsilon(2)
    model = mlp()
    start = flat(model.parameters()).clone()
    # a cap below one round's epsilon: nothing trained, nothing written
    with pytest.raises(BudgetExceeded, match="max-epsilon") as refused:
        site_run(tmp_path, SitePolicy(max_epsilon=one / 2), model=model)
    assert isinstance(refused.value, PolicyRefused)
    assert Ledger.open(path).entries == [] and torch.equal(flat(model.parameters()), start)
    # a cap between one and two rounds' epsilon: round 1 trains, round 2 is refused
    cap = SitePolicy(max_epsilon=(one + two) / 2)
    site_run(tmp_path, cap, model=model)
    trained, written = flat(model.parameters()).clone(), path.read_bytes()
    assert not torch.equal(trained, start)
    with pytest.raises(BudgetExceeded, match="max-epsilon"):
        site_run(tmp_path, cap, rnd=2, model=model)
    assert path.read_bytes() == written and torch.equal(flat(model.parameters()), trained)
    assert [e["status"] for e in Ledger.open(path).entries] == ["committed"]


# --------------------------------------------------------------------------- documented bugs


def seed_where(n: int, batch: int, wanted) -> int:
    """A loader seed whose first epoch of Poisson batch sizes satisfies ``wanted`` (a probe through
    make_private, the path train_private takes)."""
    for seed in range(500):
        step = private(mlp(), site_data(n), batch, "ghost", 1.0, 1.0, seed=seed)
        sizes = [batch_size(b) for b in step.loader]
        step.close()
        if wanted(sizes):
            return seed
    raise AssertionError("no seed found")


def trained_steps(tmp_path: Path, mode: str, seed: int) -> int:
    """Committed DP-SGD steps after one round at a 20-record site with batch 2 (10 planned steps),
    the loader (and noise) seeded with ``seed``."""
    exp = exp_config(**{"train.batch_size": 2, "privacy.grad_sample_mode": mode, "train.lr": 0.1})
    assert plan_round(exp.privacy, exp.train, 1, 20).steps == 10
    with study_noise_seeds(itertools.repeat(seed).__next__):
        train_private(
            mlp(), site_data(20), exp.train, exp.privacy, rounds=1, ledger=Ledger.open(tmp_path / "l.json"),
            policy=SIMULATION, site="s", run="r", server_round=1,
        )  # fmt: skip
    return sum(e["steps"] for e in Ledger.open(tmp_path / "l.json").entries)


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_batch_mid_round_is_a_noisy_accounted_step(tmp_path: Path, mode: str) -> None:
    seed = seed_where(20, 2, lambda s: s[0] > 0 and 0 in s)
    assert trained_steps(tmp_path, mode, seed) == 10


# Found by this file (was: bookkeeping/hooks crashed on a zero-length batch; an empty batch before the
# first non-empty one came from Opacus as a list and was skipped without noise or accounting).
@pytest.mark.parametrize("mode", MODES)
def test_a_leading_empty_batch_is_a_noisy_accounted_step(tmp_path: Path, mode: str) -> None:
    seed = seed_where(20, 2, lambda s: s[0] == 0 and all(s[1:]))
    assert trained_steps(tmp_path, mode, seed) == 10


# Found by this file: with 93 batches per epoch (n=2976, B=32) Opacus's Poisson loader has
# int(1 / (1/93)) = 92 batches and its accountant records q = 1/92; the plan now counts the same way.
def test_the_dp_loader_yields_the_planned_batches_per_epoch() -> None:
    n, batch = 93 * 32, 32
    exp = exp_config(**{"train.batch_size": batch})
    plan = plan_round(exp.privacy, exp.train, 1, n)
    step = private(mlp(), site_data(n), batch, "ghost", 1.0, 1.0)
    try:
        assert plan.steps == len(step.loader) == 92 and plan.sample_rate == pytest.approx(1 / 92)
    finally:
        step.close()


# --------------------------------------------------------------------------- physical batches


@pytest.mark.parametrize(("mode", "max_steps"), [("bookkeeping", 0), ("ghost", 0), ("hooks", 0), ("bookkeeping", 3)])
def test_physical_batches_give_the_same_dp_steps(mode: str, max_steps: int) -> None:
    """privacy.max_physical_batch_size: the same Poisson batches and the same noise (seeded here, as
    only a test may) split into physical batches of 5 end at the same weights as unsplit batches of
    ~16, and the accountant records the same logical steps: only memory changes, not the DP step.
    train.max_steps counts those steps, not physical batches, and so does the round's result."""
    from common.privacy.governance.dpsgd import physical_batches
    from common.privacy.mechanism.clipping import make_private

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (64, 1, 6, 6)).astype(np.uint8)
    raw = RawData(labels=rng.integers(0, 3, 64).astype(np.int64), images=images)
    train_keys = {"train.optimizer": "sgd", "train.lr": 0.5, "train.momentum": 0.0, "train.max_steps": max_steps}
    cfg = config_mod.load(None, train_keys).train
    ds = make_dataset(raw, config_mod.load(None).model)
    finals, steps, results = [], [], []
    for size in (64, 5):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(64, 3))
        step = make_private(
            model, torch.optim.SGD(model.parameters(), lr=0.5), make_loader(ds, 16, shuffle=True, seed=3),
            mode=mode, noise_multiplier=0.7, max_grad_norm=0.05, accountant="rdp",
            noise_generator=torch.Generator().manual_seed(4),
        )  # fmt: skip
        try:
            sizes: list[int] = []

            def seen(loader, sizes=sizes):  # noqa: ANN001, ANN202
                for batch in loader:
                    sizes.append(int(batch["labels"].shape[0]))
                    yield batch

            with physical_batches(step, size, cfg) as (loader, physical):
                result = train(model, seen(loader), cfg, optimizer=step.optimizer, loss_fn=step.criterion,
                               physical=physical)  # fmt: skip
        finally:
            step.close()
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        steps.append(sum(k for _, _, k in step.accountant.history))
        results.append(result)
        if size == 5:  # physical batches of at most 5, more of them than logical steps
            assert max(sizes) <= 5 and len(sizes) > (max_steps or 4)
    expected = max_steps or 4  # 64 records / expected batch 16: 4 logical steps either way
    assert steps[0] == steps[1] == results[0].steps == results[1].steps == expected
    assert results[0].num_examples == results[1].num_examples  # the same records, whole Poisson batches
    assert torch.allclose(finals[0], finals[1], atol=1e-5)


@pytest.mark.parametrize(("cap", "largest"), [(0, 4), (2, 2)])
def test_a_dp_round_never_runs_more_records_at_once_than_its_bound(tmp_path: Path, cap: int, largest: int) -> None:
    """By default a Poisson batch above train.batch_size is run as two passes of one DP step, so a
    DP site never holds more records' activations than a non-private step of the same batch size;
    privacy.max_physical_batch_size bounds it lower. The ledger keeps the round's planned steps."""
    exp = exp_config(**{"train.batch_size": 4, "privacy.max_physical_batch_size": cap})
    model, passes = mlp(), []
    training = lambda _, args: passes.append(int(args[0].shape[0])) if torch.is_grad_enabled() else None  # noqa: E731
    model.register_forward_pre_hook(training)
    with study_noise_seeds(itertools.repeat(3).__next__):
        train_private(
            model, site_data(64), exp.train, exp.privacy, rounds=1, ledger=Ledger.open(tmp_path / "l.json"),
            policy=SIMULATION, site="s", run="r", server_round=1,
        )  # fmt: skip
    steps = sum(e["steps"] for e in Ledger.open(tmp_path / "l.json").entries)
    assert steps == 16 and max(passes) <= largest
    assert len(passes) > steps  # some sampled batches took two passes or more


# --------------------------------------------------------------------------- augmentation multiplicity


@pytest.mark.parametrize("grad_sample_mode", ["auto", "hooks"])
def test_augmentation_multiplicity_clips_each_records_mean_over_its_copies(grad_sample_mode: str) -> None:
    """train.augment_multiplicity K (De et al. 2022): one noiseless DP step over all records
    (sample rate 1) moves the weights by lr x sum_i clip(mean_k grad(record i, copy k)) / n, built
    here one copy at a time with plain autograd. Clipping each copy on its own (or clipping B*K
    rows as if they were records, as an engine without per-sample gradients would) gives another
    step, which the test also checks is far enough away to be told apart."""
    from common.augment import Augmenter
    from common.privacy.governance.dpsgd import RoundPlan, _train_round

    n, k, clip, lr = 6, 3, 0.05, 0.5
    data = site_data(n)
    torch.manual_seed(0)
    model, reference = mlp(), mlp()
    reference.load_state_dict(model.state_dict())
    exp = exp_config(**{
        "train.batch_size": n, "train.lr": lr, "privacy.grad_sample_mode": grad_sample_mode,
        "train.augment": "crop", "train.augment_multiplicity": k, "privacy.max_grad_norm": clip,
    })  # fmt: skip
    plan = RoundPlan(noise_multiplier=0.0, sample_rate=1.0, steps=1, delta=1e-5, records=n)
    before = flat(model.parameters())
    _train_round(model, data, exp.train, exp.privacy, plan, 0.0, Augmenter("crop", k, seed=7))
    # the same augmented batch, by hand: sample rate 1 puts every record in the batch, in order
    everything = next(iter(make_loader(data, n, shuffle=False)))
    copies = Augmenter("crop", k, seed=7)(everything)
    mean_then_clip, clip_each = torch.zeros_like(before), torch.zeros_like(before)
    for i in range(n):
        grads = []
        for j in range(i * k, (i + 1) * k):
            reference.zero_grad(set_to_none=True)
            F.cross_entropy(reference(copies["pixel_values"][j : j + 1]), copies["labels"][j : j + 1]).backward()
            grads.append(flat(p.grad for p in reference.parameters()))
        g = torch.stack(grads).mean(0)
        mean_then_clip += g * min(1.0, clip / g.norm().item())
        clip_each += torch.stack([h * min(1.0, clip / h.norm().item()) for h in grads]).mean(0)
    torch.testing.assert_close((before - flat(model.parameters())) / lr, mean_then_clip / n, rtol=1e-4, atol=1e-7)
    assert (mean_then_clip - clip_each).norm() > 0.05 * mean_then_clip.norm()


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_batch_on_a_groupnorm_cnn_is_a_noise_only_step(tmp_path: Path, mode: str) -> None:
    """GroupNorm and per-sample convolution gradients cannot run on zero records (the crash at batch
    size 1): the empty batch skips the model and is Opacus's noise-only step, planned and accounted."""
    seed = seed_where(20, 2, lambda s: s[0] > 0 and 0 in s)
    exp = exp_config(**{"train.batch_size": 2, "privacy.grad_sample_mode": mode, "train.lr": 0.1})
    with study_noise_seeds(itertools.repeat(seed).__next__):
        train_private(
            cnn(), site_data(20), exp.train, exp.privacy, rounds=1, ledger=Ledger.open(tmp_path / "l.json"),
            policy=SIMULATION, site="s", run="r", server_round=1,
        )  # fmt: skip
    assert sum(e["steps"] for e in Ledger.open(tmp_path / "l.json").entries) == 10


def test_noise_only_step_adds_the_noise_of_a_zero_clipped_sum() -> None:
    """One noise-only SGD step (lr 1) at sigma C = 2 over q n = 4 expected records moves a weight
    that no record touched by N(0, (2/4)^2): std 0.5 over ~1k coordinates, within 10%."""
    from common.privacy.governance.dpsgd import noise_only_step

    for mode in MODES:
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))
        step = private(model, site_data(8), 4, mode, sigma=2.0, clip=1.0)
        start = flat(model.parameters()).clone()
        noise_only_step(step, model)()
        moved = flat(model.parameters()) - start
        step.close()
        assert float(moved.std()) == pytest.approx(0.5, rel=0.1), mode
        assert len(step.accountant.history) == 1, mode


def test_the_site_calibrates_and_reports_with_its_own_accountant(tmp_path: Path) -> None:
    """A job asks for PRV at target 2; the site's policy accounts with RDP: the noise is calibrated
    so the site's RDP epsilon (recomputed by dp_accounting) is within the target, and a later job
    accounted with another accountant on the same ledger is refused (epsilon never jumps)."""
    exp = exp_config(**{"privacy.target_epsilon": 2.0, "privacy.accountant": "prv", "train.batch_size": 4})
    policy = SitePolicy(accountant="rdp", ledger_dir=str(tmp_path), max_epsilon=2.0)
    path = tmp_path / "l.json"
    _, stats = train_private(
        mlp(), site_data(20), exp.train, exp.privacy, rounds=1, ledger=Ledger.open(path),
        policy=policy, site="s", run="r", server_round=1,
    )  # fmt: skip
    acc = rdp.RdpAccountant()
    for e in Ledger.open(path).entries:
        acc.compose(dp_accounting.PoissonSampledDpEvent(e["sample_rate"], dp_accounting.GaussianDpEvent(
            e["noise_multiplier"])), e["steps"])  # fmt: skip
    assert acc.get_epsilon(stats.delta) <= 2.0 * 1.002
    assert stats.epsilon == pytest.approx(acc.get_epsilon(stats.delta), rel=2e-3)
    simulated = SitePolicy(accountant="", ledger_dir=str(tmp_path), max_epsilon=100.0)
    with pytest.raises(PolicyRefused, match="accounted with rdp"):
        train_private(
            mlp(), site_data(20), exp.train, exp.privacy, rounds=1, ledger=Ledger.open(path),
            policy=simulated, site="s", run="r2", server_round=1,
        )  # fmt: skip


def test_a_round_trained_twice_raises_the_noise_of_the_rest_and_the_job_ends_within_its_target(
    tmp_path: Path,
) -> None:
    """Target 2 over 4 rounds. Round 2 is trained, its coordinator is lost, and the resumed job trains
    round 2 again: five rounds' spend for a plan of four. The redo and the rounds after it get a
    larger noise multiplier, no round is refused, and the job's epsilon, recomputed by
    dp_accounting from the ledger's entries, ends within 0.2% of the target (not above it)."""
    exp = exp_config(**{"privacy.target_epsilon": 2.0, "train.batch_size": 4})
    path = tmp_path / "l.json"
    for rnd in (1, 2, 2, 3, 4):
        train_private(
            mlp(), site_data(20), exp.train, exp.privacy, rounds=4, ledger=Ledger.open(path),
            policy=SIMULATION, site="s", run="j", server_round=rnd,
        )  # fmt: skip
    entries = Ledger.open(path).entries
    planned = plan_round(exp.privacy, exp.train, 4, 20).noise_multiplier
    sigmas = [e["noise_multiplier"] for e in entries]
    assert sigmas[:2] == [planned, planned] and all(s > planned * 1.05 for s in sigmas[2:]), sigmas
    acc = rdp.RdpAccountant()
    for e in entries:
        acc.compose(dp_accounting.PoissonSampledDpEvent(e["sample_rate"], dp_accounting.GaussianDpEvent(
            e["noise_multiplier"])), e["steps"])  # fmt: skip
    assert 2.0 * 0.99 <= acc.get_epsilon(entries[0]["delta"]) <= 2.0 * 1.002


def test_raising_rounds_after_spending_is_refused_with_the_epsilon_it_would_reach(tmp_path: Path) -> None:
    """Target 2 over 2 rounds: rounds 1-2 spend it. Resumed with strategy.rounds = 4, the noise is
    recalibrated for 4 rounds, but rounds 1-2 were spent at the 2-round noise: round 3 is refused,
    naming the epsilon the job would reach, which dp_accounting confirms is above the target."""
    exp = exp_config(**{"privacy.target_epsilon": 2.0, "train.batch_size": 4})
    path = tmp_path / "l.json"
    for rnd in (1, 2):
        train_private(
            mlp(), site_data(20), exp.train, exp.privacy, rounds=2, ledger=Ledger.open(path),
            policy=SIMULATION, site="s", run="j", server_round=rnd,
        )  # fmt: skip
    spent = Ledger.open(path).entries
    with pytest.raises(BudgetExceeded, match=r"would reach epsilon \d+\.\d+, above its privacy.target_epsilon=2") as e:
        train_private(
            mlp(), site_data(20), exp.train, exp.privacy, rounds=4, ledger=Ledger.open(path),
            policy=SIMULATION, site="s", run="j", server_round=3,
        )  # fmt: skip
    later = plan_round(exp.privacy, exp.train, 4, 20)
    acc = rdp.RdpAccountant()
    for sigma, q, steps in [(x["noise_multiplier"], x["sample_rate"], x["steps"]) for x in spent] + [
        (later.noise_multiplier, later.sample_rate, later.steps)
    ] * 2:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    reached = float(str(e.value).split("would reach epsilon ")[1].split(",")[0])
    assert reached == pytest.approx(acc.get_epsilon(later.delta), rel=2e-3) and reached > 2.02
    assert Ledger.open(path).entries == spent
