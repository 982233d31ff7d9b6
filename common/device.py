"""Where the model runs: ``train.device`` resolved once per process, batches follow the model.

The model is placed once (``place``) where a site or the server builds it; the training and
evaluation loops move each batch to the model's own device (``on_model_device``), so no device
argument is threaded through the code. Weights leave the device as CPU numpy arrays
(common/weights.py), so what is exchanged does not depend on where a party trains.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from common.config import TrainConfig
from common.errors import ConfigError

log = logging.getLogger(__name__)


def resolve(cfg: TrainConfig) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` on a machine without it is refused."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device' is 'cuda' but this machine has no CUDA device; use auto or cpu")
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def place(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    device = resolve(cfg)
    if device.type != "cpu":
        log.info("model on %s (%s)", device, torch.cuda.get_device_name(device))
    return model.to(device)


def model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def on_model_device(batch: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    device = model_device(model)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast_dtype(cfg: TrainConfig) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` (None: full precision)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
