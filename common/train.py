"""Local training and evaluation loops: pure torch, no federation or DP code.

``train`` runs the configured local epochs (or max_steps) and returns plain numbers;
``evaluate`` returns loss, accuracy and macro-F1 over a loader.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.batches import Batch
from common.config import TrainConfig
from common.errors import ConfigError
from common.metrics import classification_scores


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

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


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


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
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


def train(
    model: nn.Module,
    loader: DataLoader,
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
    step_hook: Callable[[Batch], None] | None = None,
) -> TrainResult:
    """Run local training; returns the mean training loss over the steps taken.

    ``optimizer``, ``loss_fn`` and ``step_hook`` (called after backward, before the step) let a
    caller such as DP-SGD substitute its own objects without a second training loop.
    """
    optimizer = optimizer or make_optimizer(model, cfg)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    total_loss, seen, steps = 0.0, 0, 0
    for _ in range(cfg.local_epochs):
        for batch in loader:
            if not isinstance(batch, dict):  # pragma: no cover - DP loaders give empty batches structure
                raise TypeError(f"training batch is a {type(batch).__name__}, not a dict of tensors")
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(logits(model, batch), batch["labels"])
            loss.backward()
            if step_hook is not None:
                step_hook(batch)
            optimizer.step()
            n = int(batch["labels"].shape[0])  # 0 for an empty Poisson batch: a noise-only DP step
            total_loss += float(loss.detach()) * n if n else 0.0
            seen += n
            steps += 1
            if cfg.max_steps and steps >= cfg.max_steps:
                break
        if cfg.max_steps and steps >= cfg.max_steps:
            break
    seconds = time.perf_counter() - start
    mean = total_loss / seen if seen else math.nan
    return TrainResult(loss=mean, num_examples=seen, steps=steps, seconds=seconds)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray, float]:
    """(predicted classes, true labels, mean cross-entropy) over the loader."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    preds, trues, total = [], [], 0.0
    for batch in loader:
        out = logits(model, batch)
        total += float(loss_fn(out, batch["labels"]))
        preds.append(out.argmax(dim=-1).numpy())
        trues.append(batch["labels"].numpy())
    y_pred = np.concatenate(preds) if preds else np.empty(0, dtype=np.int64)
    y_true = np.concatenate(trues) if trues else np.empty(0, dtype=np.int64)
    return y_pred, y_true, total / max(len(y_true), 1)


def evaluate(model: nn.Module, loader: DataLoader, num_labels: int) -> EvalResult:
    y_pred, y_true, loss = predict(model, loader)
    acc, f1 = classification_scores(y_true, y_pred, num_labels)
    return EvalResult(loss=loss, accuracy=acc, macro_f1=f1, num_examples=len(y_true))
