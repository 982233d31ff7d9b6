"""Class-weighted training loss (``train.class_weight``).

A site whose records are mostly one class learns a model that favours that class; where the data
the model will meet is less skewed (PneumoniaMNIST's test set is 62.5 % pneumonia, its training
sites 74 %), weighting the loss by class moves the decision threshold back. Values:

- ``none``: plain cross-entropy.
- ``balanced``: each class weighted ``n / (k * n_c)`` from the site's own training labels
  (``n`` records, ``k`` classes present, ``n_c`` of class ``c``): every class present counts
  equally in the site's loss. The weights are a statistic of the site's records, so this is for
  non-private training only (the config refuses it beside ``privacy.mode: local``).
- ``w0,w1,...``: one positive weight per class in label-set order, a setting the user chooses
  (e.g. from a known prevalence), not computed from any record: allowed under DP-SGD, where each
  record's loss is multiplied by its class's weight before its gradient is clipped (so a weight
  matters only for records whose gradient norm stays below the clip norm). Their number is
  checked against the model's classes (the job's label set), never against a site's records.

The weighted mean divides by the weights' sum, as ``nn.CrossEntropyLoss(weight=...)`` does, so a
batch's loss stays on the scale of the unweighted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from common.errors import ConfigError

KEY = "train.class_weight"
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def parse(value: str) -> str | tuple[float, ...]:
    """``"none"``, ``"balanced"`` or the explicit weights; refuses anything else naming the key."""
    text = str(value).strip()
    if text in ("none", "balanced"):
        return text
    parts = [p.strip() for p in text.split(",")]
    try:
        weights = tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"{KEY} {value!r} must be 'none', 'balanced' or one positive weight per class, comma-separated "
            "(e.g. '1.9,0.7')"
        ) from None
    if len(weights) < 2 or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ConfigError(f"{KEY} {value!r} needs one finite weight > 0 per class (at least 2)")
    return weights


def explicit(value: str) -> tuple[float, ...] | None:
    """The explicit weights of ``value``, or None for 'none' and 'balanced'."""
    parsed = parse(value)
    return parsed if isinstance(parsed, tuple) else None


def check_width(weights: torch.Tensor, classes: int) -> None:
    """One weight per class of the model (its output width: the job's label set, not any record)."""
    if len(weights) != classes:
        raise ConfigError(
            f"{KEY} gives {len(weights)} weights but the model has {classes} classes: give one weight per class, "
            "in label-set order"
        )


def explicit_tensor(value: str) -> torch.Tensor | None:
    """The explicit weights as a tensor; None for 'none' and 'balanced'."""
    weights = explicit(value)
    return None if weights is None else torch.tensor(weights, dtype=torch.float32)


def class_weights(value: str, labels: np.ndarray | torch.Tensor) -> torch.Tensor | None:
    """The per-class weight vector for ``labels`` (a site's training labels), None for 'none'."""
    parsed = parse(value)
    if parsed == "none":
        return None
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).ravel()
    if isinstance(parsed, tuple):  # checked against the model's classes where it is used
        return torch.tensor(parsed, dtype=torch.float32)
    counts = np.bincount(y, minlength=int(y.max()) + 1 if y.size else 0).astype(np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = y.size / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def weighted_cross_entropy(weights: torch.Tensor | None) -> LossFn:
    """Cross-entropy weighted by class (the mean over the batch divided by the weights' sum)."""
    if weights is None:
        return nn.CrossEntropyLoss()

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_width(weights, logits.shape[-1])
        return nn.functional.cross_entropy(logits, labels, weight=weights.to(logits.device, logits.dtype))

    return loss
