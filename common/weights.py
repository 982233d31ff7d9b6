"""Model weights as plain numpy dicts, and the checks every incoming update must pass."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from common.errors import UpdateError

Weights = dict[str, np.ndarray]


def exchanged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that travel between server and sites.

    The whole state_dict (parameters and buffers such as BatchNorm statistics), unless part of
    the model is frozen (LoRA): then only the trainable tensors (adapters and head).
    """
    state = model.state_dict()
    params = dict(model.named_parameters())
    if all(p.requires_grad for p in params.values()):
        return state
    return {k: v for k, v in state.items() if k in params and params[k].requires_grad}


def get_weights(model: nn.Module) -> Weights:
    return {k: v.detach().cpu().numpy() for k, v in exchanged_state(model).items()}


def set_weights(model: nn.Module, weights: Mapping[str, np.ndarray], source: str) -> None:
    """Load exchanged weights after checking them against the model (keys, shapes, finiteness)."""
    own = exchanged_state(model)
    check_update({k: v.detach().cpu().numpy() for k, v in own.items()}, weights, source)
    state = {k: torch.as_tensor(np.asarray(v)).to(own[k].dtype) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or (len(own) == len(model.state_dict()) and missing):
        raise UpdateError(f"weights from {source} do not fit the model ({(unexpected or missing)[0]})")


def check_update(reference: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray], source: str) -> None:
    """Raise UpdateError naming the source and tensor if the update does not fit the model."""
    missing = sorted(set(reference) - set(update))
    extra = sorted(set(update) - set(reference))
    if missing:
        raise UpdateError(f"update from {source} lacks tensor '{missing[0]}' ({len(missing)} missing)")
    if extra:
        raise UpdateError(f"update from {source} has unexpected tensor '{extra[0]}' ({len(extra)} extra)")
    for key, ref in reference.items():
        arr = np.asarray(update[key])
        if arr.shape != ref.shape:
            raise UpdateError(f"update from {source}: tensor '{key}' has shape {arr.shape}, expected {ref.shape}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise UpdateError(
                f"update from {source}: tensor '{key}' has non-finite values: its local training diverged "
                "(most often config key 'train.lr' or 'train.head_lr' too large for this model; lower it)"
            )
        if arr.dtype.kind not in "fiub":
            raise UpdateError(f"update from {source}: tensor '{key}' has non-numeric dtype {arr.dtype}")


def num_bytes(weights: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(v).nbytes for v in weights.values()))
