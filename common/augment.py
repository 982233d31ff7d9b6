"""Image augmentation at training time, with augmentation multiplicity (De et al. 2022).

``Augmenter`` turns a training batch of B images into B x K augmented images (each record's K
copies next to each other, labels repeated), each a random crop of the reflect-padded image
(shifts of up to 1/8 of its side, as CIFAR's 4 pixels of 32) and, with ``crop_flip``, a random
horizontal mirror. Without DP this is ordinary augmentation (K > 1 is a larger batch of
augmented views). Under DP-SGD, K > 1 is augmentation multiplicity: each record's per-sample
gradient is the mean of its K copies' gradients, taken before clipping
(``common.privacy.governance.dpsgd``), so the sensitivity, and with it the privacy accounting, stays that of
one record per sampled record while the gradient's variance falls.

The randomness is a seeded torch generator: augmentation draws nothing from the data, so it has
no privacy cost and simulated runs are reproducible.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from common.batches import Batch
from common.config import TrainConfig


class Augmenter:
    def __init__(self, kind: str, multiplicity: int, seed: int) -> None:
        if kind not in ("crop", "crop_flip"):
            raise ValueError(f"unknown augmentation {kind!r}")
        self.flip = kind == "crop_flip"
        self.k = multiplicity
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch: Batch) -> Batch:
        x, y = batch["pixel_values"], batch["labels"]
        if self.k > 1:
            x, y = x.repeat_interleave(self.k, dim=0), y.repeat_interleave(self.k, dim=0)
        x = random_crop(x, max(1, x.shape[-1] // 8), self.generator)
        if self.flip:
            mirrored = torch.rand(x.shape[0], generator=self.generator) < 0.5
            x = torch.where(mirrored[:, None, None, None].to(x.device), x.flip(-1), x)
        return {**batch, "pixel_values": x, "labels": y}


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) shifted by up to ``pad`` pixels each way (a crop of the
    reflect-padded image; reflection keeps an X-ray's edges free of artificial black borders)."""
    n, _, h, w = x.shape
    if n == 0:
        return x
    padded = functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W)
    index = torch.arange(n, device=x.device)[:, None, None]
    picked = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return picked.permute(0, 3, 1, 2).contiguous()


def augmenter(cfg: TrainConfig, seed: int) -> Augmenter | None:
    """The configured augmentation (``train.augment``, ``train.augment_multiplicity``), or None."""
    if cfg.augment == "none":
        return None
    return Augmenter(cfg.augment, cfg.augment_multiplicity, seed)
