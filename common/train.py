"""Local training and evaluation loops: pure torch, no federation or DP code.

``train`` runs the configured local epochs (or max_steps) and returns plain numbers;
``evaluate`` returns loss, accuracy and macro-F1 over a loader (and ROC AUC for two classes).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from common.batches import Batch
from common.class_weight import class_weights, weighted_cross_entropy
from common.config import TrainConfig
from common.device import autocast_dtype, model_device, on_model_device
from common.errors import ConfigError
from common.metrics import binary_roc_auc, classification_scores
from common.progress import Progress


@dataclass(frozen=True)
class TrainResult:
    loss: float
    num_examples: int
    steps: int
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    macro_f1: float
    num_examples: int
    roc_auc: float | None = None  # two-class tasks whose evaluated records hold both classes

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


def logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Forward pass for either model family (HF sequence classifier or torchvision CNN)."""
    if "pixel_values" in batch:
        return model(batch["pixel_values"])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits


HEAD_MODULES = ("classifier", "fc")  # the classification head's module name (BERT family, torchvision ResNet)


def is_head(name: str) -> bool:
    """Whether a parameter name belongs to the classification head (also inside peft wrappers)."""
    return any(part in HEAD_MODULES for part in name.split(".")[:-1])


@contextlib.contextmanager
def head_only(model: nn.Module, active: bool = True) -> Iterator[None]:
    """Train only the classification head inside the block (LP-FT's linear-probing phase, Kumar et
    al. 2022): every other trainable parameter is frozen, then unfrozen again on exit, so the
    exchanged tensors (common/weights.py) are the same before and after."""
    frozen = [p for n, p in model.named_parameters() if p.requires_grad and not is_head(n)] if active else []
    if active and len(frozen) == sum(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            "config key 'train.head_only_rounds': the model has no trainable classification head "
            f"(a module named {' or '.join(HEAD_MODULES)})"
        )
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def make_optimizer(model: nn.Module, cfg: TrainConfig, proximal_mu: float = 0.0) -> torch.optim.Optimizer:
    """The local optimizer (head_lr as its own group); with ``proximal_mu`` > 0, FedProx's proximal
    term (``add_proximal_term``) anchored at the model's current (global) weights."""
    optimizer = _optimizer(model, cfg)
    if proximal_mu > 0:
        add_proximal_term(optimizer, model, proximal_mu)
    return optimizer


def add_proximal_term(optimizer: torch.optim.Optimizer, model: nn.Module, mu: float) -> None:
    """FedProx (Li et al. 2020): minimise the local loss + (mu/2)||w - w_global||^2.

    The term's gradient, mu (w - w_global), is added to each trainable parameter's gradient just
    before the optimizer's update (a step pre-hook). It does not depend on any record, so under
    DP-SGD it is added after clipping and noise (Opacus's DPOptimizer runs its noise step, then the
    wrapped optimizer's step, where this hook fires): it costs no privacy and is never clipped.
    ``w_global`` is the model's weights when this is called, i.e. the round's global model.
    """
    anchors = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for p, anchor in anchors:
                if p.grad is not None:
                    p.grad.add_(p.detach() - anchor, alpha=mu)

    optimizer.register_step_pre_hook(hook)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": [p for _, p in named], "lr": cfg.lr}]
    if cfg.head_lr:
        head = [p for n, p in named if is_head(n)]
        if not head:
            raise ConfigError(
                "config key 'train.head_lr': the model has no trainable classification head "
                f"(a module named {' or '.join(HEAD_MODULES)})"
            )
        groups = [g for g in ({"params": [p for n, p in named if not is_head(n)], "lr": cfg.lr},
                              {"params": head, "lr": cfg.head_lr}) if g["params"]]  # fmt: skip
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass(frozen=True)
class PhysicalBatches:
    """Several forward/backward passes per optimizer step: DP-SGD processes a large Poisson batch
    as physical batches, and the optimizer adds noise and steps on the last of them only."""

    planned: int  # the optimizer steps the round will take
    stepped: Callable[[], bool]  # after ``optimizer.step()``: whether it took a step


def planned_steps(loader: DataLoader, cfg: TrainConfig) -> int:
    """The optimizer steps a round will take (Poisson loaders: their expected batch count)."""
    try:
        steps = cfg.local_epochs * len(loader)
    except TypeError:  # a loader without a length
        return cfg.max_steps
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def train(
    model: nn.Module,
    loader: DataLoader,
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
    step_hook: Callable[[Batch], None] | None = None,
    proximal_mu: float = 0.0,
    augment: Callable[[Batch], Batch] | None = None,
    empty_step: Callable[[], None] | None = None,
    physical: PhysicalBatches | None = None,
) -> TrainResult:
    """Run local training; returns the mean training loss over the steps taken (without any
    proximal term, which ``proximal_mu`` > 0 adds to the objective: FedProx).

    ``optimizer``, ``loss_fn`` and ``step_hook`` (called after backward, before the step) let a
    caller such as DP-SGD substitute its own objects without a second training loop. ``augment``
    maps each batch of records to the batch trained on (common/augment.py: K augmented copies per
    record); counts are of records. With ``train.ema_decay`` > 0 the model ends the round holding
    the exponential moving average of its weights over the round's steps (``WeightAverage``).
    ``empty_step`` replaces the forward, backward and step for an empty (Poisson) batch: DP-SGD's
    noise-only step, which some layers (GroupNorm, per-sample convolution gradients) cannot run.
    With ``physical``, a batch after which the optimizer did not step is part of the next step:
    steps, ``train.max_steps``, the average and the progress count optimizer steps, not batches.
    """
    optimizer = optimizer or make_optimizer(model, cfg, proximal_mu)
    loss_fn = loss_fn or _loss(cfg, loader)
    model.train()
    device = model_device(model)
    amp = autocast_dtype(cfg)
    # fp16 needs loss scaling (bf16 has fp32's range); private steps never autocast (config refuses).
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    start = time.perf_counter()
    total_loss, seen, steps, step_records = 0.0, 0, 0, 0
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
    planned = planned_steps(loader, cfg) if physical is None else physical.planned
    progress = Progress(planned, cfg.progress_seconds)
    for _ in range(cfg.local_epochs):
        for batch in loader:
            if not isinstance(batch, dict):  # pragma: no cover - DP loaders give empty batches structure
                raise TypeError(f"training batch is a {type(batch).__name__}, not a dict of tensors")
            batch = on_model_device(batch, model)
            n = int(batch["labels"].shape[0])  # 0 for an empty Poisson batch: a noise-only DP step
            if n == 0 and empty_step is not None:
                empty_step()
                steps += 1
                if ema is not None:
                    ema.update()
                progress.step(0)
                if cfg.max_steps and steps >= cfg.max_steps:
                    break
                continue
            if augment is not None:
                batch = augment(batch)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = loss_fn(logits(model, batch), batch["labels"])
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if step_hook is not None:
                step_hook(batch)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            total_loss += float(loss.detach()) * n if n else 0.0
            seen += n
            step_records += n
            if physical is not None and not physical.stepped():
                continue  # the weights did not move: the next batch belongs to the same step
            if ema is not None:
                ema.update()
            steps += 1
            progress.step(step_records)
            step_records = 0
            if cfg.max_steps and steps >= cfg.max_steps:
                break
        if cfg.max_steps and steps >= cfg.max_steps:
            break
    if ema is not None:
        ema.copy_to_model()
    seconds = time.perf_counter() - start
    mean = total_loss / seen if seen else math.nan
    return TrainResult(loss=mean, num_examples=seen, steps=steps, seconds=seconds)


def _loss(cfg: TrainConfig, loader: DataLoader) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """Cross-entropy, weighted by class when ``train.class_weight`` asks (common/class_weight.py);
    'balanced' reads the labels of the site's training set (every dataset here keeps them as ``y``)."""
    if cfg.class_weight == "none":
        return nn.CrossEntropyLoss()
    labels = getattr(loader.dataset, "y", None)
    if labels is None:
        raise TypeError(f"{type(loader.dataset).__name__} keeps no labels (y) for train.class_weight")
    return weighted_cross_entropy(class_weights(cfg.class_weight, labels))


class WeightAverage:
    """Exponential moving average of a model's trainable weights over one round's optimizer steps
    (De et al. 2022): after step t (0-based) ``ema = d_t ema + (1 - d_t) w`` with the warm-up
    ``d_t = min(decay, (1 + t) / (10 + t))``, starting from the weights the round began with.
    Buffers (BatchNorm statistics) stay those of the last iterate."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]
        self.decay, self.t = decay, 0

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.t) / (10 + self.t))
        get_ema_multi_avg_fn(d)(self.average, [p.detach() for p in self.params], self.t)
        self.t += 1

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for p, a in zip(self.params, self.average, strict=True):
            p.copy_(a)


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray, float]:
    """(logits (N, classes), true labels, mean cross-entropy) over the loader."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    outs, trues, total = [], [], 0.0
    for batch in loader:
        batch = on_model_device(batch, model)
        out = logits(model, batch).float()
        total += float(loss_fn(out, batch["labels"]))
        outs.append(out.cpu().numpy())
        trues.append(batch["labels"].cpu().numpy())
    y_logits = np.concatenate(outs) if outs else np.empty((0, 0), dtype=np.float32)
    y_true = np.concatenate(trues) if trues else np.empty(0, dtype=np.int64)
    return y_logits, y_true, total / max(len(y_true), 1)


def predict(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray, float]:
    """(predicted classes, true labels, mean cross-entropy) over the loader."""
    y_logits, y_true, loss = predict_logits(model, loader)
    return classes(y_logits), y_true, loss


def evaluate(model: nn.Module, loader: DataLoader, num_labels: int) -> EvalResult:
    y_logits, y_true, loss = predict_logits(model, loader)
    acc, f1 = classification_scores(y_true, classes(y_logits), num_labels)
    auc = binary_roc_auc(y_true, probabilities(y_logits)) if num_labels == 2 else None
    return EvalResult(loss=loss, accuracy=acc, macro_f1=f1, num_examples=len(y_true), roc_auc=auc)


def classes(y_logits: np.ndarray) -> np.ndarray:
    """The predicted class of each row of logits."""
    return y_logits.argmax(axis=-1).astype(np.int64) if y_logits.size else np.empty(0, dtype=np.int64)


def probabilities(y_logits: np.ndarray) -> np.ndarray:
    """Softmax of each row of logits: per-class probabilities that sum to 1."""
    return torch.softmax(torch.from_numpy(y_logits).double(), dim=-1).numpy() if y_logits.size else y_logits
