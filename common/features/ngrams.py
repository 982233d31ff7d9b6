"""Hashed word and character n-grams: text features with no vocabulary.

Each n-gram is hashed (MurmurHash3, scikit-learn's ``HashingVectorizer``: the same bucket on every
site and the server, with nothing learned from any record) into ``dim`` buckets. Weighting is
TF-style and per record: sublinear counts (log(1 + count)), the word block (1-2 grams) and the
character block (2-4 grams within word boundaries, which catch misspellings and word forms) each
scaled to unit L2 norm, then their sum scaled to unit norm. There is no IDF: a document frequency
is a statistic over all of a site's records, so one record's features would depend on the others
(outside DP-SGD's per-record accounting), and the same weight would mean different things at sites
with different IDFs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (2, 4)


def _unit_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ m)


def _tagged(split: Callable[[str], list[str]], tag: str, text: str) -> list[str]:
    return [f"{tag}:{gram}" for gram in split(text)]


def hashed_ngrams(texts: Sequence[str], dim: int) -> sp.csr_matrix:
    """(len(texts), dim) float32 CSR rows of unit L2 norm (all zero for a text with no n-gram)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    blocks = []
    for analyzer, ngrams in (("word", WORD_NGRAMS), ("char_wb", CHAR_NGRAMS)):
        split = HashingVectorizer(analyzer=analyzer, ngram_range=ngrams, lowercase=True).build_analyzer()
        # Tagged with their kind, so the word 'cat' and the characters 'cat' fall in different buckets.
        vec = HashingVectorizer(
            n_features=dim, analyzer=functools.partial(_tagged, split, analyzer[0]), alternate_sign=False, norm=None
        )
        counts = vec.transform(list(texts)).tocsr().astype(np.float64)
        counts.data = np.log1p(counts.data)
        blocks.append(_unit_rows(counts))
    return _unit_rows(blocks[0] + blocks[1]).astype(np.float32)
