"""common/privacy/mechanism/clipping.py: an engine that ``choose_mode`` or ``make_private`` accepts clips
correctly, and one that would not is refused with a ``ConfigError`` naming the module and the
config key 'privacy.grad_sample_mode'.

Each engine runs through ``make_private`` with noise_multiplier=0, so after the optimizer's
``pre_step`` a parameter's ``.grad`` times the expected batch size is the clipped per-sample
gradient sum; it and the engine's per-sample norms are compared with per-sample gradients computed
one sample at a time by plain autograd, clipped and summed by hand. Measured: on BERT (full and
LoRA) all three engines agree with the reference; on ALBERT (one layer group run twice) book-keeping
and Opacus hooks agree, while Opacus ghost clipping cannot clip a reused Linear (Opacus itself stops
at the second call) and is refused up front (``choose_mode`` with an example batch) or at the first
training step; ghost is accepted and right where only reused norm layers train; with tied
parameters only hooks is right and ``auto`` picks it."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.config import PrivacyConfig
from common.errors import ConfigError
from common.privacy.mechanism.clipping import MODES, choose_mode, make_private, reused_modules
from tests.test_bookkeeping import (
    Grads,
    TiedOutput,
    bert_batch,
    clipped_sum,
    forward,
    per_sample,
    tiny_albert,
    tiny_bert,
)

KEY = "privacy.grad_sample_mode"
# Opacus's "Full backward hook is firing" warning is harmless here.
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")]


def albert_norms_only() -> nn.Module:
    """ALBERT with only its LayerNorms and the head trainable (reused norm layers only)."""
    model = tiny_albert()
    for name, p in model.named_parameters():
        p.requires_grad_("LayerNorm" in name or "layer_norm" in name or name.startswith("classifier"))
    return model


class SharedWithRMSNorm(nn.Module):
    """A Linear run twice and an RMSNorm (which book-keeping does not support)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.emb, self.lin, self.norm, self.head = nn.Embedding(20, 8), nn.Linear(8, 8), nn.RMSNorm(8), nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        for _ in range(2):
            h = self.norm(h + torch.tanh(self.lin(h)))
        return self.head(h.mean(1))


def ids_batch(classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(12)
    return torch.randint(0, 20, (5, 6), generator=g), torch.randint(0, classes, (5,), generator=g)


MODELS = {
    "bert": (tiny_bert, bert_batch),
    "bert-lora": (functools.partial(tiny_bert, lora=True), bert_batch),
    "albert": (tiny_albert, bert_batch),
    "albert-lora": (functools.partial(tiny_albert, lora=True), bert_batch),
    "albert-norms": (albert_norms_only, bert_batch),
    "tied": (TiedOutput, functools.partial(ids_batch, 20)),
    "rmsnorm": (SharedWithRMSNorm, functools.partial(ids_batch, 3)),
}


def build(kind: str) -> tuple[nn.Module, object, torch.Tensor]:
    make_model, make_batch = MODELS[kind]
    model = make_model()  # seeded: every build of a kind has the same weights
    model.train()
    return (model, *make_batch())


@functools.cache
def expected(kind: str) -> tuple[Grads, torch.Tensor, float]:
    """The reference: clipped sum and norms, one sample at a time; C = the median norm."""
    model, inputs, labels = build(kind)
    grads, norms = per_sample(model, inputs, labels)
    c = float(norms.median())  # some samples clipped, some not
    return clipped_sum(grads, norms, c), norms, c


def private(model: nn.Module, mode: str, c: float, n: int, class_weights: torch.Tensor | None = None):
    trainable = [p for p in model.parameters() if p.requires_grad]
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=n)  # expected batch size n
    return make_private(
        model, torch.optim.SGD(trainable, lr=0.0), loader, mode=mode, noise_multiplier=0.0, max_grad_norm=c,
        accountant="rdp", noise_generator=torch.Generator().manual_seed(0), class_weights=class_weights,
    )  # fmt: skip


def one_step(kind: str, mode: str) -> tuple[Grads, torch.Tensor]:
    """One clipping step through ``make_private``: (clipped sum, per-sample norms)."""
    model, inputs, labels = build(kind)
    step = private(model, mode, expected(kind)[2], len(labels))
    try:
        assert step.mode == mode and step.optimizer.expected_batch_size == len(labels)
        step.optimizer.zero_grad(set_to_none=True)
        step.criterion(forward(model, inputs), labels).backward()
        norms = step.norms().detach().clone()
        step.optimizer.pre_step()  # clip (and, here, add zero noise) and scale by 1 / expected batch size
        grads = {n: p.grad * len(labels) for n, p in model.named_parameters() if p.requires_grad}
    finally:
        step.close()
    return grads, norms


def assert_matches_reference(kind: str, mode: str) -> None:
    want, want_norms, _ = expected(kind)
    got, norms = one_step(kind, mode)
    torch.testing.assert_close(norms, want_norms.float(), rtol=1e-4, atol=1e-6)
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6, msg=f"{mode}: {name}")


def choose(kind: str, mode: str, with_batch: bool = True) -> str:
    model, inputs, _ = build(kind)
    return choose_mode(PrivacyConfig(mode="local", grad_sample_mode=mode), model, inputs if with_batch else None)


# --------------------------------------------------------------------------- right where accepted


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["bert", "bert-lora"])
def test_all_engines_match_reference_on_bert(kind: str, mode: str) -> None:
    assert choose(kind, mode) == mode
    assert_matches_reference(kind, mode)


@pytest.mark.parametrize("mode", ["bookkeeping", "hooks"])
@pytest.mark.parametrize("kind", ["albert", "albert-lora"])
def test_bookkeeping_and_hooks_match_reference_on_albert(kind: str, mode: str) -> None:
    assert choose(kind, mode) == mode
    assert_matches_reference(kind, mode)


def test_ghost_is_accepted_and_right_where_only_reused_norm_layers_train() -> None:
    model, inputs, _ = build("albert-norms")
    assert any("LayerNorm" in m for m in reused_modules(model, inputs))
    assert choose("albert-norms", "ghost") == "ghost"
    assert_matches_reference("albert-norms", "ghost")


def test_hooks_is_right_with_tied_parameters() -> None:
    assert choose("tied", "hooks") == "hooks"
    assert_matches_reference("tied", "hooks")


# --------------------------------------------------------------------------- refused where wrong


@pytest.mark.parametrize("kind", ["albert", "albert-lora"])
def test_ghost_refuses_albert_shared_layers(kind: str) -> None:
    """Up front with an example batch, else at the first training forward pass."""
    model, inputs, labels = build(kind)
    assert any(".attention.query" in m for m in reused_modules(model, inputs))
    assert reused_modules(*build("bert")[:2]) == []
    with pytest.raises(ConfigError, match=rf"{KEY}.*ghost.*attention\.query.*runs 2 times.*'bookkeeping'"):
        choose(kind, "ghost")
    assert choose(kind, "auto") == choose(kind, "auto", with_batch=False) == "bookkeeping"
    step = private(model, "ghost", 1.0, len(labels))
    try:
        with pytest.raises(ConfigError, match=rf"{KEY}.*ghost.*attention\.query.*more than once.*'bookkeeping'"):
            forward(model, inputs)
    finally:
        step.close()


@pytest.mark.parametrize("mode", ["bookkeeping", "ghost"])
def test_tied_parameters_refused_by_bookkeeping_and_ghost(mode: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"{KEY}.*{mode}.*emb \(Embedding\) shares 'emb.weight'.*use 'auto' or 'hooks'"
    ):
        choose("tied", mode, with_batch=False)
    with pytest.raises(ConfigError, match=rf"{KEY}.*{mode}.*emb \(Embedding\)"):
        private(TiedOutput(), mode, 1.0, 5)
    assert choose("tied", "auto", with_batch=False) == "hooks"


def test_auto_falls_back_to_hooks_for_a_reused_layer_bookkeeping_cannot_clip() -> None:
    """Book-keeping refuses the RMSNorm, ghost the reused Linear: with an example batch ``auto``
    picks hooks; without one it picks ghost, which refuses at its first step, pointing to hooks."""
    assert choose("rmsnorm", "auto") == "hooks"
    with pytest.raises(ConfigError, match=rf"{KEY}.*bookkeeping.*norm \(RMSNorm\)"):
        choose("rmsnorm", "bookkeeping")
    assert choose("rmsnorm", "auto", with_batch=False) == "ghost"
    model, inputs, labels = build("rmsnorm")
    step = private(model, "ghost", 1.0, len(labels))
    try:
        with pytest.raises(ConfigError, match=rf"{KEY}.*ghost.*'lin' \(Linear\).*use 'hooks'"):
            forward(model, inputs)
    finally:
        step.close()
    assert_matches_reference("rmsnorm", "hooks")


def _fast_clipping_optimizer(seed: int, noise: float, in_place: bool) -> tuple[nn.Parameter, object]:
    from opacus.optimizers import DPOptimizerFastGradientClipping

    from common.privacy.mechanism.clipping import _noise_in_place

    w = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    opt = DPOptimizerFastGradientClipping(
        torch.optim.SGD([w], lr=0.5), noise_multiplier=noise, max_grad_norm=2.0, expected_batch_size=4,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    if in_place:
        _noise_in_place(opt)
    return w, opt


def _two_physical_batches(w: nn.Parameter, opt: object, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """One logical step over two physical batches (as Opacus's BatchMemoryManager runs it), with
    an in-place zero_grad between them, as a training loop may call it."""
    opt.zero_grad(set_to_none=True)
    w.grad = g1.clone()
    opt.signal_skip_step(do_skip=True)
    opt.step()
    opt.zero_grad(set_to_none=False)
    w.grad = g2.clone()
    opt.step()
    return w.detach().clone()


def test_bookkeeping_optimizer_noises_in_place_with_opacus_arithmetic() -> None:
    """The book-keeping optimizer adds Opacus's noise to the clipped sum in place (no gradient copy):
    without noise, w - lr * (g1 + g2) / B worked out by hand (0.5 * [[4, 0], [2, 6]] / 4), also when
    zero_grad(set_to_none=False) runs between physical batches (an aliased sum would be zeroed); with
    noise, the same update as Opacus's own optimizer from the same generator seed; and a single
    batch's step leaves the noised gradient in the very tensor the engine handed over."""
    g1, g2 = torch.tensor([[1.0, 0.0], [2.0, 2.0]]), torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    w, opt = _fast_clipping_optimizer(0, 0.0, in_place=True)
    expected = torch.tensor([[1.0 - 0.5, -2.0], [0.5 - 0.25, 3.0 - 0.75]])
    assert torch.allclose(_two_physical_batches(w, opt, g1, g2), expected)

    w_ref, opt_ref = _fast_clipping_optimizer(7, 1.5, in_place=False)
    w_new, opt_new = _fast_clipping_optimizer(7, 1.5, in_place=True)
    ref = _two_physical_batches(w_ref, opt_ref, g1, g2)
    assert not torch.allclose(ref, expected)  # the noise is there
    assert torch.equal(_two_physical_batches(w_new, opt_new, g1, g2), ref)

    opt_new.zero_grad(set_to_none=True)
    handed = g1.clone()
    w_new.grad = handed
    opt_new.step()
    assert w_new.grad.data_ptr() == handed.data_ptr()
