"""The ``model`` section: which network every site and the server build."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config.require import _require

ModelName = Literal["bert", "resnet18", "resnet34", "resnet50", "resnet8", "resnet20", "linear"]
# model.name "linear": fixed features, each computed at the site from its own records (common/features/).
TEXT_FEATURES = ("ngrams", "encoder")
IMAGE_FEATURES = ("pixels", "scatter")
MINILM = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ModelConfig:
    """Which network every site and the server build (identically)."""

    name: ModelName = "resnet18"
    # bert: a local folder, a hub name (online only), or "all-MiniLM-L6-v2" (bundled).
    checkpoint: str = MINILM
    max_length: int = 64
    # resnet: input channels (1 = grayscale), small-image stem for 28-32 px inputs,
    # and an optional local file of pretrained weights (else random init, logged).
    in_channels: int = 1
    small_input: bool = True
    weights: str = ""
    # A weights file must set every tensor of the network but its classification head (one made for
    # another architecture would silently leave the rest at random init); true: load only the
    # tensors whose names and shapes match (e.g. a 3-channel stem into a 1-channel model), logged.
    weights_partial: bool = False
    # resnet normalization: "batch" (torchvision's default) or "group" (GroupNorm: no batch
    # statistics to average across non-IID sites; the variant DP-SGD uses anyway).
    # resnet8/resnet20 (CIFAR-style, common/resnet_small.py) always have a 3x3 stem, GroupNorm and
    # weight-standardized convolutions: small_input and norm do not change them.
    norm: Literal["batch", "group"] = "batch"
    # bert: LoRA rank (0: off). With LoRA only the adapters and the head are trained and sent.
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("query", "value")
    # bert: what the classification head reads. "cls": the checkpoint's own pooler ([CLS] token,
    # dense + tanh; Hugging Face's default). "mean": the attention-masked mean of the last hidden
    # states, the pooling sentence-transformer checkpoints such as all-MiniLM-L6-v2 were trained
    # with (no pooler weights; a linear head on it starts far closer to a good classifier).
    pooling: Literal["cls", "mean"] = "cls"
    # bert: how the new classification head starts. "random" (Hugging Face's init) or "label_names":
    # each row is the encoder's embedding of its label's name (card_arrival -> "card arrival"),
    # a zero-shot classifier before any training (label names are public: no privacy cost;
    # common/head_init.py). Needs data.labels to be names, not codes.
    head_init: Literal["random", "label_names"] = "random"
    # linear: a linear classifier on fixed features that every site computes from its own records and
    # never sends (only the linear layer is trained and exchanged). "pixels" (scaled to [-1, 1]),
    # "scatter" (a wavelet scattering transform), "ngrams" (hashed word and character n-grams, no
    # vocabulary), "encoder" (model.checkpoint frozen, mean-pooled over tokens), or text features
    # joined with "+", e.g. "encoder+ngrams" (common/features/).
    features: str = "pixels"
    # linear + ngrams: the number of hash buckets (the layer's input width for the n-grams).
    hash_dim: int = 4096
    # linear: every record's feature vector is multiplied by this constant (fixed, per record: no
    # statistic of any data). Under DP-SGD each clipped, noised step moves the logits in proportion to
    # the features' norm, so unit-norm features at the non-private learning rate barely move; a larger
    # scale makes each step count (docs/benchmarks.md, "linear recipes"). head_init 'label_names'
    # divides by it, so the zero-shot start is the same whatever the scale.
    feature_scale: float = 1.0
    # linear + pixels/scatter: the side of the square images the features read (data.image_size
    # resizes images of another size).
    image_size: int = 28

    def __post_init__(self) -> None:
        _require(self.max_length >= 8, "model.max_length", "must be >= 8")
        _require(self.in_channels in (1, 3), "model.in_channels", "must be 1 or 3")
        _require(self.lora_r >= 0, "model.lora_r", "must be >= 0")
        _require(not self.weights_partial or bool(self.weights), "model.weights_partial", "needs model.weights")
        _require(self.lora_r == 0 or self.name == "bert", "model.lora_r", "LoRA is available for model.name 'bert'")
        _require(0.0 <= self.lora_dropout < 1.0, "model.lora_dropout", "must be in [0, 1)")
        _require(self.lora_r == 0 or bool(self.lora_targets), "model.lora_targets", "must name modules")
        _require(self.pooling == "cls" or self.name == "bert", "model.pooling", "'mean' is for model.name 'bert'")
        bert_only = "'label_names' is for model.name 'bert', or 'linear' on text features"
        _require(self.head_init == "random" or self.is_text, "model.head_init", bert_only)
        if self.name == "linear":
            parts = self.feature_names
            known = TEXT_FEATURES + IMAGE_FEATURES
            bad = [p for p in parts if p not in known]
            if bad:
                _require(False, "model.features", f"names an unknown feature {bad[0]!r} (known: {', '.join(known)})")
            _require(len(set(parts)) == len(parts), "model.features", f"{self.features!r} names a feature twice")
            _require(
                all(p in TEXT_FEATURES for p in parts) or len(parts) == 1,
                "model.features",
                f"{self.features!r}: only text features combine ({' and '.join(TEXT_FEATURES)})",
            )
            _require(self.hash_dim >= 16, "model.hash_dim", "must be >= 16")
            _require(self.feature_scale > 0, "model.feature_scale", "must be > 0")
            _require(self.image_size >= 8, "model.image_size", "must be >= 8")

    @property
    def feature_names(self) -> tuple[str, ...]:
        """model.features split at '+' (linear)."""
        return tuple(p.strip() for p in self.features.split("+"))

    @property
    def is_text(self) -> bool:
        """Whether the model reads text (a BERT, or a linear model on text features)."""
        return self.name == "bert" or (self.name == "linear" and self.feature_names[0] in TEXT_FEATURES)
