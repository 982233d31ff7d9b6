"""How long a site's texts are in tokens, and the ``model.max_length`` rule.

The rule: the 95th percentile of the site's token lengths (special tokens included), rounded up
to a multiple of 8, at least 16 and at most the checkpoint's limit (512 for BERT-family models).
Up to 5 % of records lose their tail, and a batch costs time and memory in proportion to its
longest record (DP-SGD's per-sample work twice over), so a max_length far above the texts only
costs. Computed where the records are (``confide plan`` at the site) and printed there: the
lengths never leave the site.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PERCENTILE = 95
FLOOR, MULTIPLE, CEILING = 16, 8, 512


@dataclass(frozen=True)
class Lengths:
    p50: int
    p95: int
    longest: int
    truncated: float  # fraction of records longer than the job's max_length
    suggested: int  # the rule's max_length


def suggest(p95: float, ceiling: int = CEILING) -> int:
    return int(min(ceiling, max(FLOOR, MULTIPLE * math.ceil(p95 / MULTIPLE))))


def measure(token_counts: Sequence[int], max_length: int, ceiling: int = CEILING) -> Lengths:
    counts = np.asarray(token_counts, dtype=np.int64)
    if counts.size == 0:
        raise ValueError("no texts to measure")
    p95 = float(np.percentile(counts, PERCENTILE))
    return Lengths(
        p50=int(np.percentile(counts, 50)),
        p95=int(math.ceil(p95)),
        longest=int(counts.max()),
        truncated=float((counts > max_length).mean()),
        suggested=suggest(p95, ceiling),
    )


def token_counts(texts: Sequence[str], tokenizer) -> list[int]:  # noqa: ANN001 - a transformers tokenizer
    """Each text's length in the tokenizer's tokens, special tokens included, untruncated."""
    return [len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]]
