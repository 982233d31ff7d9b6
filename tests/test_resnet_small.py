"""common/resnet_small.py: CIFAR-style ResNet-8/20 with GroupNorm and weight-standardized convolutions.

Architecture (sizes, resolutions, head, no BatchNorm), weight standardization, DP-SGD readiness
(every clipping engine that accepts the model clips exactly like a hand loop over single samples;
the one that cannot is refused naming the module), and real learning on the built-in digits."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.config import PrivacyConfig
from common.data import label_set, read_test, read_train
from common.errors import ConfigError
from common.models import build_model, create_model
from common.privacy.mechanism.bookkeeping import supports
from common.privacy.mechanism.clipping import MODES, choose_mode, engine_problems
from common.privacy.mechanism.model_surgery import dp_compatible, readiness
from common.resnet_small import WSConv2d
from common.train import evaluate, is_head, train
from tests.test_bookkeeping import Grads, clipped_sum, per_sample
from tests.test_clipping import private

# Opacus's "Full backward hook is firing" warning is harmless here.
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")]
KEY = "privacy.grad_sample_mode"


def exp_for(name: str, in_channels: int = 1, **overrides: object):
    return config_mod.load(None, {"model.name": name, "model.in_channels": in_channels, **overrides})


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ws_convs(model: nn.Module) -> list[WSConv2d]:
    return [m for m in model.modules() if isinstance(m, WSConv2d)]


@pytest.fixture
def one_thread():
    """One intra-op thread in the heavier tests (as ``train.threads`` does for a site process): on a
    shared 2-core machine, two threads per op can make these tests ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- architecture


def test_depths_sizes_and_head() -> None:
    """ResNet-20 is He et al.'s CIFAR net (19 convolutions + fc, ~0.27M parameters with 3
    channels), ResNet-8 its n=1 sibling (7 + fc); the head is a Linear named ``fc`` on 64 pooled
    features, which ``common.train.is_head`` recognizes; there is no BatchNorm, only GroupNorm."""
    r20 = create_model(exp_for("resnet20", 3).model, 10)
    r8 = create_model(exp_for("resnet8", 1).model, 10)
    assert 260_000 < n_params(r20) < 280_000
    assert 70_000 < n_params(r8) < 80_000 and n_params(r8) < n_params(r20)
    assert (len(ws_convs(r20)), len(ws_convs(r8))) == (19, 7)
    for model in (r20, r8):
        assert isinstance(model.fc, nn.Linear) and (model.fc.in_features, model.fc.out_features) == (64, 10)
        assert {n for n, _ in model.named_parameters() if is_head(n)} == {"fc.weight", "fc.bias"}
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
        assert len(norms) == len(ws_convs(model)) and all(m.num_groups == 16 for m in norms)
        assert not any(isinstance(m, nn.Conv2d) for m in model.modules())  # see test_a_conv2d_subclass...
    assert ws_convs(r8)[0].weight.shape == (16, 1, 3, 3) and ws_convs(r20)[0].weight.shape == (16, 3, 3, 3)


@pytest.mark.parametrize("name", ["resnet8", "resnet20"])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28, 32])
def test_forward_at_small_resolutions(name: str, in_channels: int, size: int) -> None:
    """Digits (8 px), MedMNIST (28 px) and CIFAR (32 px) inputs, grayscale or RGB, give one logit
    per class, and a backward pass reaches every parameter."""
    model = create_model(exp_for(name, in_channels).model, 5)
    out = model(torch.randn(3, in_channels, size, size))
    assert out.shape == (3, 5)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_initial_weights_are_deterministic_given_the_seed() -> None:
    """Server and sites build identical weights from the same seed; another seed differs."""
    cfg = exp_for("resnet20").model
    a, b, c = create_model(cfg, 4, seed=3), create_model(cfg, 4, seed=3), create_model(cfg, 4, seed=4)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.layer2[0].conv1.weight, c.layer2[0].conv1.weight)
    assert not torch.equal(a.fc.weight, c.fc.weight)


# --------------------------------------------------------------------------- weight standardization


def test_weight_standardization() -> None:
    """Each convolution computes ``conv2d(x, W)`` with W its raw kernel standardized per output
    channel: zero mean and unit variance over (in_channels, kh, kw). So the layer's output does
    not change when a raw kernel row is shifted or rescaled."""
    model = create_model(exp_for("resnet20").model, 10)
    with torch.no_grad():
        for p in model.parameters():  # any raw kernels, far from initialization
            p.add_(torch.randn_like(p) * 0.5)
    x = torch.randn(2, 16, 8, 8)
    for conv in ws_convs(model):
        w = conv.standardized_weight().flatten(1)
        torch.testing.assert_close(w.mean(1), torch.zeros(conv.out_channels), atol=1e-5, rtol=0)
        torch.testing.assert_close(w.var(1, correction=0), torch.ones(conv.out_channels), atol=1e-4, rtol=0)
    conv = model.layer1[0].conv1
    want = F.conv2d(x, conv.standardized_weight(), None, 1, 1)
    torch.testing.assert_close(conv(x), want)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(16, 1, 1, 1) + 0.5).add_(torch.randn(16, 1, 1, 1))
    torch.testing.assert_close(conv(x), want, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- the registry around it


@pytest.mark.parametrize("overrides", [{"privacy.mode": "local"}, {"model.norm": "group"}])
def test_build_model_surgery_leaves_it_unchanged(overrides: dict) -> None:
    """``build_model``'s DP / GroupNorm surgery finds nothing to change (no BatchNorm, no in-place
    residual add): same modules, same initial weights as the plain build, and Opacus validates it."""
    plain = create_model(exp_for("resnet20").model, 3, seed=0)
    exp = exp_for("resnet20", **overrides)
    built = build_model(exp, 3)
    assert [type(m) for m in built.modules()] == [type(m) for m in plain.modules()]
    assert all(torch.equal(v, built.state_dict()[k]) for k, v in plain.state_dict().items())
    model, changes = dp_compatible(built)
    assert model is built and changes == []


def test_weights_file_loads_also_after_dp_surgery(tmp_path: Path) -> None:
    """``model.weights`` (a local state_dict) seeds the body; a head of another size stays fresh.
    Under privacy.mode=local the file is loaded after the (empty) surgery, with the same result."""
    donor = create_model(exp_for("resnet20").model, 10, seed=123)
    path = tmp_path / "w.pt"
    torch.save(donor.state_dict(), path)
    for overrides in ({}, {"privacy.mode": "local"}):
        got = build_model(exp_for("resnet20", **{"model.weights": str(path), **overrides}), 3)
        assert torch.equal(got.layer3[2].conv2.weight, donor.layer3[2].conv2.weight)
        assert torch.equal(got.norm1.weight, donor.norm1.weight)
        assert got.fc.out_features == 3
    wrong = tmp_path / "rgb.pt"
    rgb = create_model(exp_for("resnet20", 3).model, 10)
    torch.save(rgb.state_dict(), wrong)
    with pytest.raises(ConfigError, match="conv1.weight: shape"):  # an RGB stem: not silently skipped
        create_model(exp_for("resnet20", 1, **{"model.weights": str(wrong)}).model, 10)
    partial = {"model.weights": str(wrong), "model.weights_partial": True}
    got = create_model(exp_for("resnet20", 1, **partial).model, 10)
    assert got.conv1.weight.shape == (16, 1, 3, 3)  # the RGB stem is skipped, the rest loaded
    assert torch.equal(got.layer3[2].conv2.weight, rgb.layer3[2].conv2.weight)


# --------------------------------------------------------------------------- DP-SGD: clipping is exact


class WSNetWithBias(nn.Module):
    """A WSConv2d with a bias and a stride (the ResNets' convolutions have neither)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = WSConv2d(2, 8, 3, stride=2, padding=1, bias=True)
        self.norm, self.fc = nn.GroupNorm(4, 8), nn.Linear(8, 3)
        nn.init.normal_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.norm(self.conv(x))).mean((2, 3)))


def resnet8_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = build_model(exp_for("resnet8", **{"privacy.mode": "local"}), 10)
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)


def resnet20_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = build_model(exp_for("resnet20", 3, **{"privacy.mode": "local"}), 4)
    g = torch.Generator().manual_seed(2)
    return model, torch.randn(5, 3, 12, 12, generator=g), torch.randint(0, 4, (5,), generator=g)


def bias_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return WSNetWithBias(), torch.randn(5, 2, 6, 6, generator=g), torch.tensor([0, 1, 2, 1, 0])


CASES = {"resnet8": resnet8_case, "resnet20": resnet20_case, "ws-bias": bias_case}


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Grads, torch.Tensor, float]:
    """The hand loop: each sample's gradient alone (batch of 1, plain autograd), clipped to C and
    summed; C = the median norm, so some samples are clipped and some are not."""
    model.train()
    grads, norms = per_sample(model, x, y)
    c = float(norms.median())
    return clipped_sum(grads, norms, c), norms, c


def engine_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str, c: float) -> tuple[Grads, torch.Tensor]:
    """One step of ``make_private`` with zero noise: .grad x batch size is the clipped sum."""
    step = private(model, mode, c, len(y))
    try:
        step.optimizer.zero_grad(set_to_none=True)
        step.criterion(model(x), y).backward()
        norms = step.norms().detach().clone()
        step.optimizer.pre_step()
        grads = {n: p.grad * len(y) for n, p in model.named_parameters() if p.requires_grad}
    finally:
        step.close()
    return grads, norms


@pytest.mark.parametrize("case", CASES)
def test_every_accepting_engine_clips_exactly_like_single_sample_gradients(case: str, one_thread: None) -> None:
    """For the DP-ready model (and a WSConv2d with biases): the engine ``choose_mode('auto')`` picks
    (ghost) and every other engine that accepts it give per-sample norms and a clipped gradient sum
    equal to the hand loop over single samples, i.e. the per-sample gradients are those of the RAW
    kernels through the standardization. Book-keeping, whose Conv2d formulas would treat the raw
    kernel as the convolution's weight, refuses it, naming the module."""
    model, x, y = CASES[case]()
    want, want_norms, c = reference(model, x, y)
    found = engine_problems(model, x)
    assert [m for m in MODES if not found[m]] == ["ghost", "hooks"]
    assert choose_mode(PrivacyConfig(mode="local", grad_sample_mode="auto"), model, x) == "ghost"
    assert choose_mode(PrivacyConfig(mode="local", grad_sample_mode="auto"), model) == "ghost"
    for mode in ("ghost", "hooks"):
        fresh, _, _ = CASES[case]()  # same seed: same weights
        got, norms = engine_step(fresh, x, y, mode, c)
        torch.testing.assert_close(norms, want_norms.float(), rtol=1e-4, atol=1e-6, msg=f"{mode}: norms")
        assert got.keys() == want.keys()
        for name, value in want.items():
            # float32 sums in another order: elementwise error up to ~2e-6 of the tensor's largest
            # entry (measured across CPUs); a wrong clip or a missed chain rule is off by O(1).
            atol = 1e-5 * float(value.abs().max())
            torch.testing.assert_close(got[name], value, rtol=1e-4, atol=atol, msg=f"{mode}: {name}")
    refused = rf"{KEY}.*bookkeeping.*'?conv1? \(WSConv2d\).*use 'auto' or 'ghost' or 'hooks'"
    with pytest.raises(ConfigError, match=refused):
        choose_mode(PrivacyConfig(mode="local", grad_sample_mode="bookkeeping"), model)
    with pytest.raises(ConfigError, match=rf"{KEY}.*bookkeeping.*\(WSConv2d\)"):
        private(model, "bookkeeping", c, len(y))


def test_readiness_reports_ghost_and_nothing_unsupported() -> None:
    """``readiness`` (the pre-round report) finds the built model DP-ready with the ghost engine."""
    model, _, _ = resnet20_case()
    ready = readiness(model, PrivacyConfig(mode="local"), batch_size=64)
    assert ready.grad_sample_mode == "ghost" and ready.unsupported == ()
    assert ready.trainable_parameters == n_params(model)


class NaiveWSConv(nn.Conv2d):
    """The tempting way to write WS: an nn.Conv2d whose forward standardizes its weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), correction=0, keepdim=True)
        return F.conv2d(x, (self.weight - mean) * torch.rsqrt(var + 1e-6), self.bias, self.stride, self.padding)


def test_a_conv2d_subclass_would_be_clipped_wrongly_by_bookkeeping() -> None:
    """Why ``WSConv2d`` is not an ``nn.Conv2d`` subclass: book-keeping accepts a subclass as a plain
    convolution and forms per-sample gradients w.r.t. the kernel the convolution sees, not the raw
    parameter, so the clipped sum is wrong (while the WSConv2d network above is refused)."""

    def naive() -> nn.Module:
        torch.manual_seed(8)
        return nn.Sequential(NaiveWSConv(1, 8, 3, padding=1, bias=False), nn.GroupNorm(4, 8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))  # fmt: skip

    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(6, 1, 6, 6, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    want, _, c = reference(naive(), x, y)
    assert supports(naive()) == []  # accepted...
    got, _ = engine_step(naive(), x, y, "bookkeeping", c)
    assert not torch.allclose(got["0.weight"], want["0.weight"], rtol=1e-2, atol=1e-4)  # ...and wrong


# --------------------------------------------------------------------------- it learns


def digits(exp) -> tuple:
    unlabelled = read_train(exp.data)
    labels = label_set(exp.data, unlabelled)
    train_raw = unlabelled.with_labels(labels, "digits")
    test_raw = read_test(exp.data).with_labels(labels, "digits")
    return make_dataset(train_raw, exp.model), make_dataset(test_raw, exp.model), len(labels)


def test_resnet20_learns_digits(one_thread: None) -> None:
    """Two epochs of plain training on the built-in 8x8 digits (1,438 training images, 10
    classes) take ResNet-20 from chance to well above it on the held-out split (~96%)."""
    exp = exp_for("resnet20", **{"data.source": "digits", "train.local_epochs": 2, "train.lr": 3e-3})
    train_set, test_set, k = digits(exp)
    model = build_model(exp, k)
    before = evaluate(model, make_loader(test_set, 256, shuffle=False), k)
    result = train(model, make_loader(train_set, 32, shuffle=True), exp.train)
    after = evaluate(model, make_loader(test_set, 256, shuffle=False), k)
    assert result.steps == 2 * 45 and before.accuracy < 0.3
    assert after.accuracy > 0.85 and after.loss < before.loss


def test_resnet8_learns_digits_under_dp_sgd(tmp_path: Path, one_thread: None) -> None:
    """A real DP-SGD round (``train_private``: Poisson sampling, clipping with the engine ``auto``
    picks, Gaussian noise sigma=1, epsilon ~3.1 at delta 1e-5) of three epochs on digits reaches
    well above chance (10%; ~60-70% measured). Noise and sampling seeds are fixed for the test."""
    from common.privacy.governance.dpsgd import train_private
    from common.privacy.governance.ledger import Ledger
    from common.privacy.governance.policy import SIMULATION
    from common.privacy.mechanism.randomness import study_noise_seeds

    overrides = {"data.source": "digits", "train.local_epochs": 3, "train.batch_size": 64, "train.lr": 1.0,
                 "train.optimizer": "sgd", "privacy.mode": "local", "privacy.noise_multiplier": 1.0,
                 "privacy.max_grad_norm": 1.0}  # fmt: skip
    exp = exp_for("resnet8", **overrides)
    train_set, test_set, k = digits(exp)
    model = build_model(exp, k)
    with study_noise_seeds(itertools.count(1).__next__):
        result, spent = train_private(
            model, train_set, exp.train, exp.privacy, rounds=1, ledger=Ledger.open(tmp_path / "ledger.json"),
            policy=SIMULATION, site="s", run="r", server_round=1,
        )  # fmt: skip
    assert spent.grad_sample_mode == "ghost" and result.steps == 3 * 23 and 2.0 < spent.epsilon < 4.0
    assert evaluate(model, make_loader(test_set, 256, shuffle=False), k).accuracy > 0.4
