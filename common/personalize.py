"""Per-site personalisation (``strategy.personalize: head``, ``strategy.local_finetune``).

FedPer/FedRep-style: the model's body is federated, each site keeps its own classification head.
The head never leaves the site: the site's update carries the body only, the coordinator
aggregates body arrays only, and the head persists between rounds in the site's own state folder
(beside its privacy ledger, keyed by job, so a resumed job picks it up), never in the
coordinator's checkpoint. ``strategy.local_finetune: k`` adds k epochs of local training of the
whole model after the last round; the result stays on the site's disk.

What is honest under DP (docs/privacy.md): under local DP the head is trained by the same DP-SGD
steps as the body (one per-sample clip over all trainable tensors, one noise draw), so the site's
ledger already charges every step that touches its records and keeping the head adds no epsilon.
Steps outside DP-SGD (``local_finetune``, the local-only reference model) are refused or skipped
under any DP mode, because what they produce would reach the site's released evaluation metrics.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from common.atomic import replacing
from common.config import TrainConfig
from common.errors import ConfigError
from common.train import is_head

log = logging.getLogger(__name__)

V = TypeVar("V")


def head_keys(names: list[str] | Mapping[str, object]) -> frozenset[str]:
    """The tensors of the classification head (a module named ``fc`` or ``classifier``)."""
    return frozenset(k for k in names if is_head(k))


def body_of(state: Mapping[str, V]) -> dict[str, V]:
    """``state`` without the head: what a personalised site releases and the coordinator aggregates."""
    return {k: v for k, v in state.items() if not is_head(k)}


def check_split(names: list[str] | Mapping[str, object], model_name: str) -> None:
    """A model can be personalised only if it has both a head and a body among its exchanged tensors."""
    head = head_keys(names)
    if not head or len(head) == len(names):
        part = "no classification head (a module named fc or classifier)" if not head else "nothing but its head"
        raise ConfigError(
            f"config key 'strategy.personalize': model '{model_name}' exchanges {part}, so there is no "
            "body to federate beside a per-site head; use strategy.personalize: off"
        )


def head_path(ledger: Path, job: str) -> Path:
    """Where a site keeps its head (and its fine-tuned model) for a job: beside its privacy ledger,
    in the site's own folder, which the coordinator never reads."""
    return ledger.with_name(f"{ledger.stem}.personal") / f"job-{job}.head.pt"


def finetuned_path(ledger: Path, job: str) -> Path:
    return head_path(ledger, job).with_name(f"job-{job}.finetuned.pt")


def save_head(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if is_head(k)}
    save_state(state, path)


def save_state(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Replaced atomically: a site stopped mid-write keeps its previous head."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as fh:
        torch.save(dict(state), fh)


def restore_head(model: nn.Module, path: Path) -> bool:
    """Load the site's own head into ``model`` if it has one for this job; False before its first round."""
    if not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    if set(state) != set(head_keys(own)) or any(own[k].shape != v.shape for k, v in state.items()):
        raise ConfigError(f"the site's saved head {path} does not fit this job's model; remove it to start afresh")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    return True


def with_epochs(train_cfg: TrainConfig, epochs: int) -> TrainConfig:
    """The job's local training settings for ``epochs`` epochs (no step cap)."""
    return dataclasses.replace(train_cfg, local_epochs=epochs, max_steps=0)
