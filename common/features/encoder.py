"""Frozen-encoder text features: the mean over tokens of a pretrained encoder's last hidden states,
scaled to unit L2 norm (how sentence-transformer checkpoints such as all-MiniLM-L6-v2 embed a
sentence). The encoder is public and never trained, so these are computed once per site."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

BATCH = 256


@functools.lru_cache(maxsize=2)
def _encoder(checkpoint: str) -> torch.nn.Module:
    import transformers
    from transformers import AutoModel

    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # the unused pooler's load report
    transformers.logging.disable_progress_bar()  # a local folder's "Loading weights" bar
    try:
        return AutoModel.from_pretrained(checkpoint).eval()
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()


def width(checkpoint: str) -> int:
    """The encoder's hidden size (the features' width), read from the checkpoint's config."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(checkpoint).hidden_size)


@torch.no_grad()
def embed(texts: Sequence[str], checkpoint: str, max_length: int) -> torch.Tensor:
    """(len(texts), hidden) float32 unit-norm mean-pooled embeddings."""
    from common.checkpoints import load_tokenizer

    tokenizer, model = load_tokenizer(checkpoint), _encoder(checkpoint)
    out = []
    for start in range(0, len(texts), BATCH):
        enc = tokenizer(list(texts[start : start + BATCH]), truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")  # fmt: skip
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))
    emb = torch.cat(out) if out else torch.empty(0, width(checkpoint))
    return torch.nn.functional.normalize(emb.float(), dim=1)
