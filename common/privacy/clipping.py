"""Per-sample clipping engines behind one interface.

DP-SGD needs, every step, the sum over the batch of each record's gradient clipped to norm C.
Three engines compute that same quantity:

- ``bookkeeping`` (``common.privacy.bookkeeping``): one backward pass; the default wherever every
  trainable layer is supported;
- ``ghost``: Opacus's fast gradient clipping (two backward passes);
- ``hooks``: Opacus's per-sample gradients, materialized.

``make_private`` wraps a model, optimizer and loader with Opacus (Poisson sampling, Gaussian
noise, accountant) and the chosen engine, and returns a ``PrivateStep`` that the training loop
uses as it would plain objects. ``choose_mode`` picks the engine, refusing one that cannot clip a
model correctly (naming the module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from common.config import PrivacyConfig
from common.errors import ConfigError
from common.privacy.bookkeeping import BookKeeping, supports

MODES = ("bookkeeping", "ghost", "hooks")


def choose_mode(cfg: PrivacyConfig, model: nn.Module) -> str:
    """The clipping engine for this model: book-keeping where all its trainable layers are
    supported, else Opacus's ghost clipping; or the one the config names, if it can handle the model."""
    unsupported = supports(model)
    if cfg.grad_sample_mode == "auto":
        return "ghost" if unsupported else "bookkeeping"
    if cfg.grad_sample_mode == "bookkeeping" and unsupported:
        raise ConfigError(
            "config key 'privacy.grad_sample_mode': bookkeeping does not support "
            f"{', '.join(unsupported[:3])}; use 'auto', 'ghost' or 'hooks'"
        )
    return cfg.grad_sample_mode


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
) -> PrivateStep:
    from opacus import PrivacyEngine

    if mode not in MODES:
        raise ConfigError(f"config key 'privacy.grad_sample_mode' must be one of {', '.join(MODES)}; got {mode!r}")
    engine = PrivacyEngine(accountant=accountant)
    out = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="hooks" if mode == "hooks" else "ghost",
        criterion=nn.CrossEntropyLoss(),
        wrap_model=False,
        noise_generator=noise_generator,
    )
    if mode == "hooks":
        (hooks, dp_optimizer, dp_loader), criterion = out, nn.CrossEntropyLoss()
    else:
        hooks, dp_optimizer, criterion, dp_loader = out

    def close_hooks() -> None:
        hooks.remove_hooks()
        hooks.cleanup()

    if mode == "bookkeeping":  # keep Opacus's optimizer (noise, accountant) and loader; replace its hooks
        close_hooks()
        bk = BookKeeping(model, max_grad_norm)
        return PrivateStep(
            mode, dp_optimizer, dp_loader, _BookKeepingLoss(bk), engine.accountant, lambda: bk.last_norms, bk.remove
        )
    norms = hooks.get_norm_sample if mode == "ghost" else (lambda: _materialized_norms(model))
    return PrivateStep(mode, dp_optimizer, dp_loader, criterion, engine.accountant, norms, close_hooks)


def _materialized_norms(model: nn.Module) -> torch.Tensor:
    per_param = [
        p.grad_sample.reshape(len(p.grad_sample), -1).norm(2, dim=-1)
        for p in model.parameters()
        if p.requires_grad and getattr(p, "grad_sample", None) is not None
    ]
    return torch.stack(per_param, dim=1).norm(2, dim=1) if per_param else torch.zeros(0)


class _BookKeepingLoss:
    """Loss for ``common.train.train`` under book-keeping clipping: ``backward()`` leaves the
    clipped per-sample gradient sum in ``.grad`` (what Opacus's fast-gradient-clipping optimizer
    then noises and scales, as it does after ghost clipping's two passes)."""

    def __init__(self, engine: BookKeeping) -> None:
        self.engine = engine

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> _PerSampleLoss:
        return _PerSampleLoss(self.engine, nn.functional.cross_entropy(logits, labels, reduction="none"))


@dataclass
class _PerSampleLoss:
    engine: BookKeeping
    losses: torch.Tensor

    def backward(self) -> None:
        self.engine.backward(self.losses)

    def detach(self) -> torch.Tensor:
        return self.losses.detach().mean()
