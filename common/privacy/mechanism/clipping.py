"""Per-sample clipping engines behind one interface.

DP-SGD needs, every step, the sum over the batch of each record's gradient clipped to norm C.
Three engines compute that same quantity:

- ``bookkeeping`` (``common.privacy.mechanism.bookkeeping``): one backward pass; the default wherever every
  trainable layer is supported and no trainable parameter is tied to another module's;
- ``ghost``: Opacus's fast gradient clipping (two backward passes);
- ``hooks``: Opacus's per-sample gradients, materialized.

Not every engine is right for every model. Measured against per-sample gradients computed one
sample at a time (tests/test_clipping.py): book-keeping handles modules that run more than once per
forward pass (ALBERT's shared layers) but not tied parameters; Opacus's ghost clipping handles
neither a reused Linear / Embedding nor tied parameters (Opacus stops with "Parameter tying is not
supported with Ghost Clipping"); Opacus's hooks mode sums per-sample gradients over calls and
owners and handles both. Tied parameters are visible in the model; reuse only during a forward
pass: ``reused_modules`` probes one batch, and the ghost engine also refuses at its first step
if it sees a reused layer it cannot clip.

``make_private`` wraps a model, optimizer and loader with Opacus (Poisson sampling, Gaussian
noise, accountant) and the chosen engine, and returns a ``PrivateStep`` that the training loop
uses as it would plain objects. ``choose_mode`` picks the engine, refusing one that cannot clip a
model correctly with a ``ConfigError`` naming the module.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from common.config import PrivacyConfig
from common.errors import ConfigError
from common.privacy.mechanism.bookkeeping import BookKeeping, supports, tied_parameters

MODES = ("bookkeeping", "ghost", "hooks")
_KEY = "config key 'privacy.grad_sample_mode'"

Example = torch.Tensor | dict[str, torch.Tensor]  # a batch: images, or a dict batch (labels ignored)


# --------------------------------------------------------------------------- what each engine can clip


def _trainable_modules(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules() if any(p.requires_grad for p in m.parameters(recurse=False))}


def _run(model: nn.Module, batch: Example) -> None:
    if isinstance(batch, torch.Tensor):
        model(batch)
    elif "pixel_values" in batch:
        model(batch["pixel_values"])
    else:
        model(**{k: v for k, v in batch.items() if k != "labels"})


def call_counts(model: nn.Module, batch: Example) -> dict[str, tuple[nn.Module, int]]:
    """How many times each module with trainable parameters runs in one forward pass of ``batch``
    (run without gradients and in eval mode, so no hook records it and no dropout draws randomness)."""
    names = _trainable_modules(model)
    counts: dict[nn.Module, int] = dict.fromkeys(names, 0)

    def count(module: nn.Module, args: tuple) -> None:
        counts[module] += 1

    handles = [m.register_forward_pre_hook(count) for m in names]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            _run(model, batch)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return {names[m]: (m, k) for m, k in counts.items()}


def reused_modules(model: nn.Module, batch: Example) -> list[str]:
    """Modules with trainable parameters that run more than once in one forward pass of ``batch``."""
    return [f"{name} ({type(m).__name__})" for name, (m, k) in call_counts(model, batch).items() if k > 1]


def _ghost_norm_types() -> tuple[type, ...]:
    """Layer types Opacus's ghost clipping takes norms of call by call (a reused one is refused)."""
    import opacus.grad_sample  # noqa: F401 - registers the norm samplers
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleHooksFastGradientClipping

    return tuple(GradSampleHooksFastGradientClipping.NORM_SAMPLERS)


def _ghost_problems(model: nn.Module, batch: Example | None) -> list[str]:
    found = tied_parameters(model)
    if batch is not None:
        kinds = _ghost_norm_types()
        found += [
            f"{name} ({type(m).__name__}) runs {k} times per forward pass"
            for name, (m, k) in call_counts(model, batch).items()
            if k > 1 and type(m) in kinds
        ]
    return found


def engine_problems(model: nn.Module, batch: Example | None = None) -> dict[str, list[str]]:
    """Per engine, what in this model it cannot clip correctly (empty list: it can). Without an
    example ``batch`` only static facts are checked (unsupported layers, tied parameters); reuse
    of a module within a forward pass is then caught by the ghost engine at its first step."""
    return {"bookkeeping": supports(model), "ghost": _ghost_problems(model, batch), "hooks": []}


def _refuse(mode: str, found: dict[str, list[str]]) -> ConfigError:
    working = [repr(m) for m in MODES if not found[m]]
    return ConfigError(
        f"{_KEY}: {mode} clipping cannot clip this model's per-sample gradients correctly: "
        f"{'; '.join(found[mode][:3])}; use 'auto' or {' or '.join(working)}"
    )


def choose_mode(cfg: PrivacyConfig, model: nn.Module, batch: Example | None = None) -> str:
    """The clipping engine for this model: the first of book-keeping, ghost, hooks that can clip
    it correctly, or the one the config names, if it can (else a ``ConfigError`` naming the module).
    With an example ``batch``, modules reused within a forward pass are found up front."""
    found = engine_problems(model, batch)
    if cfg.grad_sample_mode == "auto":
        return next(mode for mode in MODES if not found[mode])
    if found[cfg.grad_sample_mode]:
        raise _refuse(cfg.grad_sample_mode, found)
    return cfg.grad_sample_mode


class _ReuseGuard:
    """Ghost clipping's runtime check: a ``ConfigError`` naming the first layer of ``kinds`` that
    runs a second time within one training forward pass (before Opacus would see it)."""

    def __init__(self, model: nn.Module, kinds: tuple[type, ...], advice: str) -> None:
        self.names = {m: n for m, n in _trainable_modules(model).items() if type(m) in kinds}
        self.advice, self.seen = advice, set[nn.Module]()
        self.handles = [model.register_forward_pre_hook(self._reset, prepend=True)]
        self.handles += [m.register_forward_pre_hook(self._check) for m in self.names]

    def _reset(self, module: nn.Module, args: tuple) -> None:
        self.seen.clear()

    def _check(self, module: nn.Module, args: tuple) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        if module in self.seen:
            raise ConfigError(
                f"{_KEY}: ghost clipping cannot clip '{self.names[module]}' ({type(module).__name__}), which runs "
                f"more than once per forward pass (a shared layer): Opacus takes its norm call by call, not over "
                f"the sum of the calls' gradients; use {self.advice}"
            )
        self.seen.add(module)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


# --------------------------------------------------------------------------- the engines


@dataclass
class PrivateStep:
    """Opacus-wrapped training objects plus the clipping engine; ``close()`` detaches the engine."""

    mode: str
    optimizer: Any  # opacus.optimizers.DPOptimizer
    loader: DataLoader  # Poisson-sampled
    criterion: Callable[[torch.Tensor, torch.Tensor], Any]
    accountant: Any  # the Opacus accountant this round's steps were recorded in
    norms: Callable[[], torch.Tensor]  # per-sample gradient norms of the last step
    close: Callable[[], None]

    def stepped(self) -> bool:
        """After ``optimizer.step()``: whether the optimizer noised and stepped. Under physical
        batches it only accumulates the clipped sum until its Poisson batch's last one."""
        return not getattr(self.optimizer, "_is_last_step_skipped", False)


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    *,
    mode: str,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: str,
    noise_generator: torch.Generator,
    class_weights: torch.Tensor | None = None,
) -> PrivateStep:
    """``class_weights``: each record's loss times its class's weight before its gradient is
    clipped (``train.class_weight`` given explicitly; a setting, not a statistic of the records)."""
    from opacus import PrivacyEngine

    if mode not in MODES:
        raise ConfigError(f"{_KEY} must be one of {', '.join(MODES)}; got {mode!r}")
    found = engine_problems(model)
    if found[mode]:
        raise _refuse(mode, found)
    with warnings.catch_warnings():
        # Opacus warns that its own secure RNG is off; the noise and the Poisson sampling come from
        # ``noise_generator``, seeded from the OS's entropy (common/privacy/mechanism/randomness.py).
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=accountant)
    out = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="hooks" if mode == "hooks" else "ghost",
        criterion=nn.CrossEntropyLoss(weight=class_weights),  # ghost reads per-sample losses from it
        wrap_model=False,
        noise_generator=noise_generator,
    )
    if mode == "hooks":
        (hooks, dp_optimizer, dp_loader), criterion = out, per_sample_mean(class_weights)
    else:
        hooks, dp_optimizer, criterion, dp_loader = out
    _empty_batches_have_structure(dp_loader, loader)
    close_hooks = _closer(hooks.remove_hooks, hooks.cleanup)
    step = PrivateStep(mode, dp_optimizer, dp_loader, criterion, engine.accountant, _no_norms, close_hooks)
    if mode == "bookkeeping":
        return _with_bookkeeping(step, model, max_grad_norm, class_weights)
    if mode == "ghost":
        advice = "'hooks'" if found["bookkeeping"] else "'bookkeeping' or 'hooks'"
        guard = _ReuseGuard(model, _ghost_norm_types(), advice)
        return replace(step, norms=hooks.get_norm_sample, close=_closer(guard.remove, close_hooks))
    return replace(step, norms=functools.partial(_materialized_norms, model))


def _no_norms() -> torch.Tensor:
    return torch.zeros(0)


def _closer(*closes: Callable[[], None]) -> Callable[[], None]:
    def close() -> None:
        for c in closes:
            c()

    return close


def _with_bookkeeping(
    step: PrivateStep, model: nn.Module, max_grad_norm: float, class_weights: torch.Tensor | None = None
) -> PrivateStep:
    """Keep Opacus's optimizer (noise, accountant) and loader; replace its hooks by book-keeping."""
    step.close()
    _noise_in_place(step.optimizer)
    bk = BookKeeping(model, max_grad_norm)
    return replace(step, criterion=_BookKeepingLoss(bk, class_weights), norms=lambda: bk.last_norms, close=bk.remove)


def _noise_in_place(optimizer: Any) -> None:
    """Opacus's fast-gradient-clipping optimizer, minus two copies of every gradient per step.

    Opacus deep-copies ``.grad`` into ``summed_grad`` (so that a later in-place zeroing of ``.grad``
    cannot touch the sum) and writes ``summed_grad + noise`` to a third tensor: for full MiniLM,
    two extra 87 MiB copies at the step and one carried until ``zero_grad``. Book-keeping assigns
    every parameter a fresh ``.grad`` each backward pass and nothing else holds it, so the sum may
    start as that tensor and take the noise in place; ``.grad`` is then always released, never
    zeroed in place, so an accumulated sum (physical batches) cannot be zeroed through it. Same
    arithmetic, same noise draws in the same order, same processed-gradient checks."""
    from opacus.optimizers import DPOptimizerFastGradientClipping

    if type(optimizer) is not DPOptimizerFastGradientClipping:
        got = type(optimizer).__name__
        raise TypeError(f"book-keeping expects Opacus's DPOptimizerFastGradientClipping, got {got}")
    optimizer.__class__ = _in_place_noise_optimizer()


@functools.cache
def _in_place_noise_optimizer() -> type:
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.optimizers.optimizer import _check_processed_flag, _generate_noise, _mark_as_processed

    class InPlaceNoise(DPOptimizerFastGradientClipping):
        def accumulate(self) -> None:
            for p in self.params:
                if p.summed_grad is None:
                    p.summed_grad = p.grad.detach()
                else:
                    p.summed_grad.add_(p.grad.detach())

        def add_noise(self) -> None:
            multiplier = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
            for p in self.params:
                _check_processed_flag(p.summed_grad)
                noise = _generate_noise(
                    std=multiplier * self.max_grad_norm,
                    reference=p.summed_grad,
                    generator=self.generator,
                    secure_mode=self.secure_mode,
                )
                p.grad = p.summed_grad.add_(noise).view_as(p)
                del noise
                _mark_as_processed(p.summed_grad)

        def zero_grad(self, set_to_none: bool = False) -> None:
            super().zero_grad(set_to_none=True)

    return InPlaceNoise


def _materialized_norms(model: nn.Module) -> torch.Tensor:
    per_param = [
        p.grad_sample.flatten(1).norm(2, dim=-1)
        for p in model.parameters()
        if p.requires_grad and getattr(p, "grad_sample", None) is not None
    ]
    return torch.stack(per_param, dim=1).norm(2, dim=1) if per_param else torch.zeros(0)


class _BookKeepingLoss:
    """Loss for ``common.train.train`` under book-keeping clipping: ``backward()`` leaves the
    clipped per-sample gradient sum in ``.grad`` (what Opacus's fast-gradient-clipping optimizer
    then noises and scales, as it does after ghost clipping's two passes)."""

    def __init__(self, engine: BookKeeping, class_weights: torch.Tensor | None = None) -> None:
        self.engine = engine
        self.class_weights = class_weights

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> _PerSampleLoss:
        return _PerSampleLoss(self.engine, per_sample_losses(logits, labels, self.class_weights))


def per_sample_losses(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """Each record's cross-entropy, times its class's weight when given."""
    weight = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
    return nn.functional.cross_entropy(logits, labels, weight=weight, reduction="none")


def per_sample_mean(class_weights: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The per-sample engine's loss: the plain mean of (weighted) per-record losses. Not PyTorch's
    weighted mean, which divides by the batch's weight sum: a per-sample gradient must depend on its
    own record alone (Opacus rescales the mean by the batch size)."""
    if class_weights is None:
        return nn.CrossEntropyLoss()
    return lambda logits, labels: per_sample_losses(logits, labels, class_weights).mean()


@dataclass
class _PerSampleLoss:
    engine: BookKeeping
    losses: torch.Tensor

    def backward(self) -> None:
        self.engine.backward(self.losses)

    def detach(self) -> torch.Tensor:
        return self.losses.detach().mean()


def _empty_batches_have_structure(dp_loader: DataLoader, loader: DataLoader) -> None:
    """Opacus turns an empty Poisson batch into zero-length tensors shaped like the FIRST non-empty
    batch; before one has been seen it yields a bare list, which a training loop cannot step on.
    Every empty batch must still be a (noise-only) step, or the released mechanism differs from the
    accounted one: give the collator a batch structure up front."""
    collate = getattr(dp_loader, "collate_fn", None)
    if getattr(collate, "first_batch", "absent") is None and len(loader.dataset) > 0:
        collate.first_batch = collate.wrapped_collator_fn([loader.dataset[0]])
