"""The ``train`` section: each site's local training per round."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common import class_weight
from common.config.require import _require


@dataclass(frozen=True)
class TrainConfig:
    """Local training on each site, per round."""

    local_epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 1e-3
    # Learning rate of the classification head (BERT's classifier, ResNet's fc); 0: train.lr.
    # A new head usually wants a larger one than pretrained (or LoRA) weights.
    head_lr: float = 0.0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.9
    # Cap on optimizer steps per round (0: no cap, run local_epochs).
    max_steps: int = 0
    # A site logs its progress within a round (steps, records/s, time left) at most this often
    # (seconds; 0: never). Only in the site's own log.
    progress_seconds: float = 30.0
    # torch intra-op threads per site process (0: torch's default).
    threads: int = 0
    # LP-FT (Kumar et al. 2022): the first N rounds train only the classification head (the encoder
    # frozen), then everything trainable; a head fitted first does not distort pretrained features.
    head_only_rounds: int = 0
    # Where sites and the server run the model: "auto" = CUDA when this machine has it, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision (autocast) for non-private training: "bf16" (no loss scaling needed) or
    # "fp16" (with a gradient scaler); DP-SGD always runs in fp32 (its clipping needs exact norms).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Image augmentation at training time (common/augment.py): random shifts of up to 1/8 of the
    # side ("crop"), plus random horizontal mirroring ("crop_flip"). "none" for text models.
    augment: Literal["none", "crop", "crop_flip"] = "none"
    # K augmented copies of every sampled image. Under DP-SGD, augmentation multiplicity (De et al.
    # 2022): a record's K gradients are averaged before clipping, so the same epsilon buys a less
    # noisy gradient (K times the compute; the per-sample "hooks" engine).
    augment_multiplicity: int = 1
    # Exponential moving average of the weights over each round's local steps (De et al. 2022),
    # decay min(ema_decay, (1 + t) / (10 + t)) at step t; the site sends the averaged weights
    # (post-processing: no privacy cost). 0: off, the last iterate is sent.
    ema_decay: float = 0.0
    # Class-weighted loss (common/class_weight.py): "none", "balanced" (from the site's own label
    # counts; not under local DP) or one weight per class in label-set order, e.g. "1.9,0.7".
    class_weight: str = "none"

    def __post_init__(self) -> None:
        class_weight.parse(self.class_weight)
        _require(self.local_epochs >= 1, "train.local_epochs", "must be >= 1")
        _require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _require(self.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
        _require(self.lr > 0, "train.lr", "must be > 0")
        _require(self.head_lr >= 0, "train.head_lr", "must be >= 0 (0: same as train.lr)")

        _require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _require(self.max_steps >= 0, "train.max_steps", "must be >= 0")
        _require(self.progress_seconds >= 0, "train.progress_seconds", "must be >= 0 seconds (0: no progress lines)")
        _require(self.threads >= 0, "train.threads", "must be >= 0")
        _require(self.head_only_rounds >= 0, "train.head_only_rounds", "must be >= 0")
        _require(self.augment_multiplicity >= 1, "train.augment_multiplicity", "must be >= 1")
        _require(
            self.augment_multiplicity == 1 or self.augment != "none",
            "train.augment_multiplicity",
            f"({self.augment_multiplicity}) needs an augmentation: set train.augment to 'crop' or 'crop_flip' "
            "(K identical copies would only repeat the same gradient)",
        )
        _require(0 <= self.ema_decay < 1, "train.ema_decay", "must be in [0, 1) (0: off)")
