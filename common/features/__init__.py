"""Fixed features for ``model.name: linear``: records -> feature vectors, computed at the site.

Every feature is a fixed function of one record (no statistic over other records, nothing
learned from data), so a site computes its features once, keeps them (``cache``), and only the
linear layer trained on them is exchanged, clipped and noised like any model's weights.

- ``pixels``: the image scaled to [-1, 1], flattened.
- ``scatter``: a wavelet scattering transform (J = 2, L = 8: 81 maps per channel at 1/4
  resolution), each record's order-0, order-1 and order-2 maps standardised over themselves
  (per-record group normalisation; Tramer & Boneh 2021), the vector scaled to unit L2 norm.
- ``ngrams``: hashed word and character n-grams (``common.features.ngrams``).
- ``encoder``: the frozen ``model.checkpoint``, mean-pooled (``common.features.encoder``).
Text features combine with "+": each block has unit norm and the blocks are concatenated.
Every vector is then multiplied by ``model.feature_scale`` (a constant: still one record's function).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

from common.config import ModelConfig
from common.data import RawData
from common.errors import DataError
from common.features import cache
from common.features.scatter import channels, scatter

SCATTER_J, SCATTER_L = 2, 8

Features = torch.Tensor | sp.csr_matrix  # dense rows, or sparse ones (n-grams)


def width(cfg: ModelConfig) -> int:
    """The feature vector's length for ``cfg`` (the linear layer's input width)."""
    total = 0
    side = cfg.image_size
    for name in cfg.feature_names:
        if name == "pixels":
            total += cfg.in_channels * side * side
        elif name == "scatter":
            total += cfg.in_channels * channels(SCATTER_J, SCATTER_L) * (-(-side // 2**SCATTER_J)) ** 2
        elif name == "ngrams":
            total += cfg.hash_dim
        else:
            from common.checkpoints import checkpoint_path
            from common.features.encoder import width as encoder_width

            total += encoder_width(checkpoint_path(cfg))
    return total


def featurize(raw: RawData, cfg: ModelConfig) -> Features:
    """The records' features: (N, width(cfg)) dense float32 rows, or CSR rows when n-grams are in,
    times ``cfg.feature_scale``."""
    x = _unscaled(raw, cfg)
    if cfg.feature_scale == 1.0:
        return x
    if sp.issparse(x):
        return (x * np.float32(cfg.feature_scale)).astype(np.float32).tocsr()
    return x * cfg.feature_scale


def _unscaled(raw: RawData, cfg: ModelConfig) -> Features:
    if not cfg.is_text:
        return _image_features(raw, cfg)
    assert raw.texts is not None
    blocks: list[Features] = []
    for name in cfg.feature_names:
        if name == "ngrams":
            from common.features.ngrams import hashed_ngrams

            blocks.append(hashed_ngrams(raw.texts, cfg.hash_dim))
        else:
            from common.checkpoints import checkpoint_path
            from common.features.encoder import embed

            path, texts, length = checkpoint_path(cfg), raw.texts, cfg.max_length
            key = cache.key("encoder", path, length, list(texts))
            blocks.append(cache.load_or(key, functools.partial(embed, texts, path, length)))
    if len(blocks) == 1:
        return blocks[0]
    as_sparse = [b if sp.issparse(b) else sp.csr_matrix(b.numpy()) for b in blocks]
    return sp.hstack(as_sparse, format="csr", dtype=np.float32)


def _image_features(raw: RawData, cfg: ModelConfig) -> torch.Tensor:
    assert raw.images is not None
    n, c, h, w = raw.images.shape
    if h != cfg.image_size or w != cfg.image_size:
        raise DataError(
            f"the images are {h}x{w} px but config key 'model.image_size' is {cfg.image_size}: set it to "
            f"{h}, or data.image_size to {cfg.image_size} to resize them"
        )
    x = torch.from_numpy(raw.images).float().div_(255.0)
    if c != cfg.in_channels:  # channels matched to the model, as for the image models
        x = x.mean(dim=1, keepdim=True) if cfg.in_channels == 1 else x.expand(-1, 3, -1, -1)
    if n == 0:
        return torch.zeros(0, width(cfg))
    if cfg.feature_names == ("pixels",):
        return x.mul(2.0).sub(1.0).flatten(1).contiguous()
    key = cache.key("scatter", SCATTER_J, SCATTER_L, cfg.in_channels, raw.images)
    maps = cache.load_or(key, lambda: torch.cat([scatter(part, SCATTER_J, SCATTER_L) for part in x.split(256)]))
    return normalise_scatter(maps.reshape(n, cfg.in_channels, -1, *maps.shape[-2:]))


def normalise_scatter(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, K, h, w) scattering maps -> (N, C K h w) unit-norm rows, each order of each channel
    standardised over its own maps and positions (one record's statistics only)."""
    first = 1 + SCATTER_J * SCATTER_L
    groups = []
    for lo, hi in ((0, 1), (1, first), (first, maps.shape[2])):
        g = maps[:, :, lo:hi]
        g = (g - g.mean(dim=(2, 3, 4), keepdim=True)) / (g.std(dim=(2, 3, 4), keepdim=True) + 1e-5)
        groups.append(g)
    flat = torch.cat(groups, dim=2).flatten(1)
    return torch.nn.functional.normalize(flat, dim=1)


@torch.no_grad()
def init_from_label_names(layer: torch.nn.Linear, cfg: ModelConfig, labels: tuple[str, ...]) -> None:
    """``model.head_init: label_names`` for text features: each class's weight row is the features of
    its label's phrase (``card_arrival`` -> "card arrival"; label names are public, no privacy cost),
    scaled so a logit is ``TEMPERATURE`` times the cosine between a record's features and its label's
    (whatever ``model.feature_scale``): a zero-shot classifier before any training. Bias zero."""
    from common.head_init import TEMPERATURE, phrase

    raw = RawData(labels=np.zeros(len(labels), dtype=np.int64), texts=tuple(phrase(lbl) for lbl in labels))
    x = featurize(raw, cfg)
    rows = torch.from_numpy(x.toarray()) if sp.issparse(x) else x
    rows = torch.nn.functional.normalize(rows.float(), dim=1)
    # A record's features have norm feature_scale * sqrt(number of blocks): the logits are then
    # TEMPERATURE * cosine.
    layer.weight.copy_(rows * (TEMPERATURE / math.sqrt(len(cfg.feature_names)) / cfg.feature_scale))
    layer.bias.zero_()


class FeatureSet(Dataset):
    """A site's records as fixed feature vectors (computed once) with their labels."""

    def __init__(self, raw: RawData, cfg: ModelConfig) -> None:
        self.x = featurize(raw, cfg)
        self.y = torch.from_numpy(raw.labels)
        expected = width(cfg)
        if self.x.shape[1] != expected and len(self.y):
            raise DataError(f"features of width {self.x.shape[1]}, but the model reads {expected}")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, self.y[i]

    def collate(self, items: list[tuple[int, torch.Tensor]]) -> dict[str, torch.Tensor]:
        rows = [i for i, _ in items]
        if sp.issparse(self.x):
            x = torch.from_numpy(self.x[rows].toarray())
        else:
            x = self.x[rows]
        return {"features": x, "labels": torch.stack([y for _, y in items]) if items else self.y[:0]}
