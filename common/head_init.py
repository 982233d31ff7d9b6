"""Initialise a text classifier's head from the encoder's embeddings of the label names.

Label names are public (``card_arrival``, ``Credit reporting``, ``pneumonia``): encoding them costs
no privacy. Each head row becomes the direction of its label's embedding, as seen by the head (the
features the classification layer receives, captured with a forward pre-hook, so the model's own
pooling is used), scaled so the logits are a cosine similarity times ``TEMPERATURE``. The model
then starts as a zero-shot classifier instead of a random one, and fine-tuning (especially under
DP-SGD, where every step is noisy) starts much closer to a good solution.

Only the server calls this (server/run.py): its initial weights are what every site receives in
round 1, so the sites' own initialisation never matters.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from common.errors import ConfigError

log = logging.getLogger(__name__)

TEMPERATURE = 10.0


def phrase(label: str) -> str:
    """``card_arrival`` -> ``card arrival``; ``getSpareCard`` -> ``get spare card``."""
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", label)
    return re.sub(r"[_\-./]+", " ", text).strip().lower() or label


def head_of(model: nn.Module) -> nn.Linear:
    for name in ("classifier", "score"):
        head = getattr(model, name, None) or getattr(getattr(model, "base_model", None), name, None)
        if isinstance(head, nn.Linear):
            return head
    raise ConfigError(
        "config key 'model.head_init': 'label_names' needs a single linear classification head "
        f"(this {type(model).__name__} has none named 'classifier')"
    )


@torch.no_grad()
def init_from_label_names(model: nn.Module, tokenizer, labels: tuple[str, ...], max_length: int) -> None:  # noqa: ANN001
    """Set the head's rows to the (normalised) features of each label's phrase; bias to zero."""
    head = head_of(model)
    if head.out_features != len(labels):
        raise ConfigError(f"config key 'data.labels': {len(labels)} labels for a head with {head.out_features} outputs")
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    mode = model.training
    try:
        model.eval()
        device = head.weight.device
        batch = tokenizer([phrase(lbl) for lbl in labels], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")  # fmt: skip
        model(**{k: v.to(device) for k, v in batch.items()})
    finally:
        hook.remove()
        model.train(mode)
    features = captured[0].float()
    scale = features.norm(dim=1).mean().clamp(min=1e-6)
    rows = features / features.norm(dim=1, keepdim=True).clamp(min=1e-6)
    head.weight.copy_((TEMPERATURE / scale) * rows)
    if head.bias is not None:
        head.bias.zero_()
    log.info("classification head initialised from the embeddings of %d label names", len(labels))
