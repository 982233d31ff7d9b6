"""Typed experiment configuration: the one declared place for every tunable.

An experiment is a YAML file whose sections mirror the dataclasses below. Values are
resolved in this order: dataclass defaults < YAML file < overrides (e.g. from
``flwr run --run-config``). Unknown keys and bad values raise ``ConfigError`` naming
the dotted key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from common import class_weight, yamlfile
from common.errors import ConfigError

ModelName = Literal["bert", "resnet18", "resnet34", "resnet50", "resnet8", "resnet20", "linear"]
# model.name "linear": fixed features, each computed at the site from its own records (common/features/).
TEXT_FEATURES = ("ngrams", "encoder")
IMAGE_FEATURES = ("pixels", "scatter")
DataSource = Literal[
    "digits", "synthetic_text", "synthetic_images", "csv", "json", "jsonl", "parquet", "imagefolder", "npz"
]
TEXT_SOURCES = ("synthetic_text", "csv", "json", "jsonl", "parquet")
IMAGE_SOURCES = ("digits", "synthetic_images", "imagefolder", "npz")
BUILTIN_SOURCES = ("digits", "synthetic_text", "synthetic_images")
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


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from, how labels are read, and how it is split into sites."""

    source: DataSource = "digits"
    # Training file or folder (text: csv/json/jsonl/parquet; images: folder or .npz).
    path: str = ""
    # Optional server-side test set. For npz the file's test_* arrays are used when empty.
    test_path: str = ""
    text_field: str = "text"
    label_field: str = "label"
    # The label set every site uses. Empty: derived once from the training data and
    # recorded in the run's resolved config. Sites with their own files need it set.
    labels: tuple[str, ...] = ()
    # Resize images to this square size (0 keeps the native size).
    image_size: int = 0
    # The pixel value of white in the image files. 0: 8-bit images (uint8, or integers in 0..255);
    # anything else is refused rather than guessed. Set it for other ranges: 1 for floats in [0, 1],
    # 4095 for 12-bit, 65535 for 16-bit; values are scaled to 8 bits (0..pixel_max -> 0..255).
    pixel_max: float = 0.0
    num_sites: int = 3
    partitioner: Literal["iid", "dirichlet"] = "iid"
    alpha: float = 0.5
    min_partition_size: int = 10
    # Fraction of each site's data held out for federated evaluation.
    val_fraction: float = 0.2
    # Use only the first N training records (0: all). For quick runs and tests.
    max_samples: int = 0
    central_eval: bool = True
    # Set by the coordinator when it derived data.labels from the pooled training records (a
    # simulation convenience): the label set is then a release about the records that no epsilon
    # covers, and privacy.json says so. Declared labels (the job's, public) leave it False.
    labels_from_records: bool = False

    def __post_init__(self) -> None:
        _require(self.num_sites >= 1, "data.num_sites", "must be >= 1")
        _require(self.alpha > 0, "data.alpha", "must be > 0")
        _require(0.0 < self.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1)")
        _require(self.max_samples >= 0, "data.max_samples", "must be >= 0")
        _require(self.image_size >= 0, "data.image_size", "must be >= 0")
        _require(self.pixel_max >= 0, "data.pixel_max", "must be >= 0 (0: 8-bit images)")
        _require(self.min_partition_size >= 0, "data.min_partition_size", "must be >= 0")
        if self.source not in BUILTIN_SOURCES:
            _require(bool(self.path), "data.path", f"is required for source '{self.source}'")
        _require(len(set(self.labels)) == len(self.labels), "data.labels", "has duplicates")

    @property
    def is_text(self) -> bool:
        return self.source in TEXT_SOURCES


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


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy for the whole training.

    mode "local": DP-SGD (Opacus) at every site; record-level (epsilon, delta) per site, accounted
    cumulatively over all rounds. Either ``noise_multiplier`` is set directly, or ``target_epsilon``
    (> 0) calibrates it from rounds, local epochs, batch size and the site's record count.
    mode "central": site-level DP with Flower's DP strategy wrappers (clip each site's update,
    add Gaussian noise to the aggregate), accounted over rounds.
    A site's own node config can only tighten this: its epsilon cap and noise floor always win.
    """

    mode: Literal["off", "local", "central"] = "off"
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    # > 0; null: not given (noise_multiplier is used as set).
    target_epsilon: float | None = None
    # 0: min(1e-5, 1/(10 n)) with n the site's training records (local) or the number of sites
    # (central); a delta >= 1/n is refused (it guarantees nothing).
    delta: float = 0.0
    accountant: Literal["rdp", "prv"] = "rdp"
    # How per-sample gradients are clipped: "bookkeeping" (one backward pass, common/privacy/mechanism/bookkeeping.py),
    # Opacus "ghost" clipping (two passes) or Opacus "hooks" (per-sample gradients materialized);
    # "auto" = bookkeeping where it can clip the model correctly, else ghost, else hooks (tied parameters,
    # reused layers: common/privacy/mechanism/clipping.py). All give the same DP-SGD step.
    grad_sample_mode: Literal["auto", "bookkeeping", "ghost", "hooks"] = "auto"
    # Split each Poisson-sampled batch into physical batches of at most this many records (Opacus's
    # BatchMemoryManager): large expected batches in bounded memory, the same DP step (0: no split).
    max_physical_batch_size: int = 0

    # central mode: Flower's DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping
    clip_side: Literal["server", "client"] = "server"
    clipping: Literal["fixed", "adaptive"] = "fixed"
    clipping_norm: float = 1.0
    # Where the coordinator's site-level (central) privacy ledger lives; "" = central.json in the
    # simulation ledger folder (privacy.ledger_dir). Runs that share it share the sites' cumulative
    # site-level epsilon.
    central_ledger: str = ""
    # The coordinator's cap on any site's cumulative site-level epsilon in its central ledger
    # (0: none): a job that would take a site past it is refused before it starts.
    central_max_epsilon: float = 0.0
    # Simulation only: the folder where simulated sites (and the coordinator) keep their privacy
    # ledgers, one sub-folder per data set; "" = $CONFIDE_STATE_DIR/ledgers, else
    # ~/.local/state/confide/ledgers. Never the run folder, so resumes, reruns and sweeps on the
    # same data compose. A deployed site's ledger is its own policy's ledger-dir, never the job's.
    ledger_dir: str = ""

    # What sites release beside their weights under DP (a site's policy caps it): "withhold"
    # (nothing derived from records: no loss, accuracy, clip fraction or exact count), "noisy"
    # (held-out count, accuracy and loss, and the training count, with Gaussian noise charged to
    # the site's ledger; training loss and clip fraction withheld), "exact" (all, unprotected).
    site_metrics: Literal["withhold", "noisy", "exact"] = "withhold"
    release_noise_multiplier: float = 10.0

    def __post_init__(self) -> None:
        _require(self.noise_multiplier >= 0, "privacy.noise_multiplier", "must be >= 0")
        _require(self.max_grad_norm > 0, "privacy.max_grad_norm", "must be > 0")
        _require(
            self.target_epsilon is None or self.target_epsilon > 0,
            "privacy.target_epsilon",
            "must be > 0 (leave it out to set privacy.noise_multiplier directly)",
        )
        _require(0 <= self.delta < 1, "privacy.delta", "must be in [0, 1)")
        _require(self.clipping_norm > 0, "privacy.clipping_norm", "must be > 0")
        _require(
            self.mode != "central" or self.clipping == "fixed",
            "privacy.clipping",
            "'adaptive' is not available with central DP: its noisy clipped-count release is not accounted "
            "in Confide's site-level ledger; use 'fixed'",
        )
        _require(self.release_noise_multiplier > 0, "privacy.release_noise_multiplier", "must be > 0")
        _require(self.max_physical_batch_size >= 0, "privacy.max_physical_batch_size", "must be >= 0")
        _require(self.central_max_epsilon >= 0, "privacy.central_max_epsilon", "must be >= 0 (0: no cap)")
        if self.mode == "off":
            # A privacy product never drops a privacy setting silently: without a mode it would train
            # with no DP at all while the file reads as if it had some.
            changed = [f for f in dataclasses.fields(self) if f.name != "mode" and getattr(self, f.name) != f.default]
            given = [f.name for f in changed]
            if given:
                key = f"privacy.{given[0]}"
                _require(
                    False,
                    key,
                    "is set but privacy.mode is 'off', so it would be ignored and the job would train without "
                    f"differential privacy: set privacy.mode to 'local' or 'central', or remove {key}",
                )
        if self.mode != "off" and self.target_epsilon is None:
            _require(
                self.noise_multiplier > 0,
                "privacy.noise_multiplier",
                "must be > 0 when privacy is on and no target_epsilon is given",
            )

    @property
    def local(self) -> bool:
        return self.mode == "local"


StrategyName = Literal[
    "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
    "qfedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan",
]  # fmt: skip
# Families (server/strategies.py maps each name to Flower's class): server optimizers (the averaged
# update is a pseudo-gradient for momentum or Adam-style steps), robust aggregators (median,
# trimming, Krum selection: one bad site cannot move the model arbitrarily), fairness (q-FFL).
SERVER_OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")
ROBUST = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")


@dataclass(frozen=True)
class StrategyConfig:
    """Server-side orchestration: which Flower strategy aggregates, with its own parameters."""

    name: StrategyName = "fedavg"
    rounds: int = 3
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    # Minimum sites that must be connected and that must reply for a round to count.
    min_sites: int = 2
    round_timeout: float = 3600.0
    # fedprox: weight mu of the proximal term (mu/2)||w - w_global||^2 each site adds to its local
    # objective (also under DP-SGD: its gradient is data-independent and added after the noise).
    proximal_mu: float = 0.01
    # Server optimizers. server_lr 0: Confide's default per strategy (fedavgm 1.0; fedadam, fedyogi,
    # fedadagrad 0.01: an adaptive server step moves every weight by about server_lr per round, and
    # Flower's 0.1 is larger than most ResNet weights; on digits 0.01 reached 0.82 in 2 rounds, 0.03
    # 0.35). server_momentum: fedavgm's; 0.5 bounds the steady-state step at 2x the mean update (0.9,
    # Hsu et al.'s choice for hundreds of rounds, lets it grow to 10x). beta1/beta2/tau: FedAdam/
    # FedYogi/FedAdagrad's moment decays and adaptivity (Reddi et al. 2021).
    server_lr: float = 0.0
    server_momentum: float = 0.5
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    # fedtrimmedavg: fraction cut from each end per coordinate.
    trim_beta: float = 0.2
    # krum, multikrum, bulyan: Byzantine sites tolerated; multikrum: updates averaged (0: n - f).
    num_malicious: int = 0
    num_selected: int = 0
    # qfedavg: fairness exponent q (0 = FedAvg-like; larger favours worse-off sites).
    q: float = 0.1
    # Which global model is exported: "last" (the final round's) or "best_held_out" (the round with
    # the highest site-weighted accuracy on the sites' held-out data: model selection without the
    # test set). It needs the sites' evaluation: under DP only with privacy.site_metrics noisy or
    # exact, and strategy.fraction_evaluate > 0; without it the last round's model is exported and
    # the log and model card say so. "auto": best_held_out where the sites release that accuracy,
    # else last (the last round of a short or oscillating run lost 4-6 points on small real sets).
    # "tail_average": the mean of the global models of the last tail_rounds rounds (server/selection.py):
    # post-processing of models already released, so it costs no epsilon under DP and needs no site
    # metric; most sensible for a convex model (model.name: linear). tail_rounds 0: half of rounds,
    # rounded up.
    final_model: Literal["auto", "last", "best_held_out", "tail_average"] = "auto"
    tail_rounds: int = 0
    # Exclude an update whose norm (w_site - w_global) exceeds this many times the median norm of
    # the round's updates (a scaled or poisoned update); recorded with the reason under the site's
    # name. 0: off (the statistics are recorded either way: common/update_stats.py).
    reject_norm_ratio: float = 0.0
    # "median": every accepted update is scaled down to the median update norm of the round before
    # aggregation (norm bounding, Sun et al. 2019), so no site moves the model more than a typical
    # one; with any strategy and with reject_norm_ratio. "off": updates are aggregated as sent.
    # Refused under secagg and central DP (server/norm_bound.py).
    norm_bound: Literal["off", "median"] = "off"
    # Exclude an update whose cosine to the coordinate-wise median update of the round is below this
    # (a sign-flipped update sits near -1, an honest one above 0), recorded like reject_norm_ratio.
    # -1: off. Refused under secagg and central DP, as norm_bound.
    min_cosine_to_median: float = -1.0
    # Per-site personalisation (common/personalize.py). "head": the body is federated and each site
    # keeps its own classification head, which it never sends and the coordinator never aggregates
    # (FedPer/FedRep style, for skewed sites); "off": the whole model is federated.
    personalize: Literal["off", "head"] = "off"
    # Epochs of local training of the whole model at each site after the last round; the result stays
    # at the site. Only without DP (privacy.mode off): those steps run outside any DP mechanism.
    local_finetune: int = 0

    def __post_init__(self) -> None:
        _require(self.rounds >= 1, "strategy.rounds", "must be >= 1")
        _require(0 <= self.tail_rounds <= self.rounds, "strategy.tail_rounds",
                 f"must be in [0, strategy.rounds = {self.rounds}] (0: half of the rounds)")  # fmt: skip
        _require(self.local_finetune >= 0, "strategy.local_finetune", "must be >= 0 (epochs after the last round)")
        _require(
            self.reject_norm_ratio == 0 or self.reject_norm_ratio > 1,
            "strategy.reject_norm_ratio",
            "must be 0 (off) or > 1 (a multiple of the round's median update norm)",
        )
        _require(-1 <= self.min_cosine_to_median < 1, "strategy.min_cosine_to_median", "must be in [-1, 1) (-1: off)")
        _require(0 < self.fraction_train <= 1, "strategy.fraction_train", "must be in (0, 1]")
        _require(0 <= self.fraction_evaluate <= 1, "strategy.fraction_evaluate", "must be in [0, 1]")
        _require(self.min_sites >= 1, "strategy.min_sites", "must be >= 1")
        _require(self.round_timeout > 0, "strategy.round_timeout", "must be > 0")
        _require(self.proximal_mu >= 0, "strategy.proximal_mu", "must be >= 0")
        _require(self.name != "fedprox" or self.proximal_mu > 0, "strategy.proximal_mu",
                 "must be > 0 for strategy 'fedprox' (0 is FedAvg)")  # fmt: skip
        _require(self.server_lr >= 0, "strategy.server_lr", "must be >= 0 (0: the strategy's default)")
        _require(0 <= self.server_momentum < 1, "strategy.server_momentum", "must be in [0, 1)")
        _require(0 <= self.beta1 < 1, "strategy.beta1", "must be in [0, 1)")
        _require(0 <= self.beta2 < 1, "strategy.beta2", "must be in [0, 1)")
        _require(self.tau > 0, "strategy.tau", "must be > 0")
        _require(0 <= self.trim_beta < 0.5, "strategy.trim_beta", "must be in [0, 0.5)")
        _require(self.num_malicious >= 0, "strategy.num_malicious", "must be >= 0")
        _require(self.num_selected >= 0, "strategy.num_selected", "must be >= 0")
        _require(self.q >= 0, "strategy.q", "must be >= 0")

    @property
    def personalized(self) -> bool:
        """Whether sites keep a model of their own (a personal head, or a fine-tuned copy)."""
        return self.personalize != "off" or self.local_finetune > 0

    @property
    def local_proximal_mu(self) -> float:
        """The proximal weight each site's local training uses (0 unless FedProx)."""
        return self.proximal_mu if self.name == "fedprox" else 0.0

    def min_replies(self) -> int:
        """Valid updates the strategy needs to aggregate at all (robust rules need more than f)."""
        f = self.num_malicious
        return {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(self.name, 1)


@dataclass(frozen=True)
class FaultConfig:
    """Failure injection for simulations (client/faults.py): what goes wrong at the simulated sites,
    seeded by the experiment's seed and recorded in the run's metrics. Sites are partition ids;
    -1: none. A deployed site (one with its own data file) refuses any of this."""

    # Probability that a site drops out of a round (its reply is an error: "injected dropout").
    dropout: float = 0.0
    # Each reply is delayed by a uniform random 0..straggler_delay seconds (a slow site).
    straggler_delay: float = 0.0
    # This site crashes from round crash_round on (every reply an error).
    crash_site: int = -1
    crash_round: int = 1
    # This site's weight update is corrupted every round: "nan", "scale" (x corrupt_scale), "flip"
    # (sign-flipped and x corrupt_scale), "evade" (sign-flipped and scaled to 0.95 x the largest norm
    # strategy.reject_norm_ratio lets through, its own update's norm standing in for the round's
    # median; x corrupt_scale where no norm rule rejects) or "bias" (its update plus a fixed direction,
    # the same every round and at every colluding site, of norm corrupt_scale x its update's norm) or
    # "disguise" (the evading flip pushed along its honest sign pattern until its cosine to its own
    # update is just above strategy.min_cosine_to_median).
    # corrupt_count: the sites corrupt_site, corrupt_site + 1, ... that collude (the same attack).
    corrupt_site: int = -1
    corrupt: Literal["nan", "scale", "flip", "evade", "bias", "disguise"] = "flip"
    corrupt_scale: float = 10.0
    corrupt_count: int = 1
    # This site's training labels are shifted by one class (a mislabelled site).
    label_flip_site: int = -1

    def __post_init__(self) -> None:
        _require(0 <= self.dropout < 1, "faults.dropout", "must be in [0, 1)")
        _require(self.straggler_delay >= 0, "faults.straggler_delay", "must be >= 0 seconds")
        _require(self.crash_round >= 1, "faults.crash_round", "must be >= 1")
        for key in ("crash_site", "corrupt_site", "label_flip_site"):
            _require(getattr(self, key) >= -1, f"faults.{key}", "must be a site's partition id, or -1 (none)")
        _require(self.corrupt_scale > 0, "faults.corrupt_scale", "must be > 0")
        _require(self.corrupt_count >= 1, "faults.corrupt_count", "must be >= 1 (sites from faults.corrupt_site on)")

    @property
    def active(self) -> bool:
        return (
            bool(self.dropout or self.straggler_delay)
            or max(self.crash_site, self.corrupt_site, self.label_flip_site) >= 0
        )


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation (Flower's SecAgg+, server/secagg.py and client/app.py): the server learns
    only the sum of the sampled sites' updates. Sites mask their quantised update with pairwise
    and private masks; the masks cancel in the sum once enough sites reveal their shares."""

    enabled: bool = False
    # Each site secret-shares with this fraction of the round's sampled sites (1.0: all of them;
    # Flower's num_shares as a fraction).
    shares: float = 1.0
    # Fraction of a site's shares needed to rebuild its secrets; the round survives as long as this
    # many of each site's share-holders reply (Flower's reconstruction_threshold as a fraction).
    threshold: float = 0.67
    # Every element of a site's update (w_site - w_global, after DP noise) is clipped to
    # [-clip_range, clip_range] and quantised to quantization_range levels over that interval.
    clip_range: float = 8.0
    quantization_range: int = 4194304

    def __post_init__(self) -> None:
        _require(0 < self.shares <= 1, "secagg.shares", "must be in (0, 1]")
        _require(0 < self.threshold <= 1, "secagg.threshold", "must be in (0, 1]")
        _require(self.clip_range > 0, "secagg.clip_range", "must be > 0")
        _require(self.quantization_range >= 2**8, "secagg.quantization_range", "must be >= 256")


@dataclass(frozen=True)
class BaselineConfig:
    """The simple baseline every job reports beside its model (common/baseline.py): a linear layer on
    pixels (images) or hashed n-grams (text), trained federated on the same sites in the same job,
    before the model's rounds. The model card, the round lines and the study report show both."""

    # "auto": pixels for images, ngrams for text; "off": no baseline; or a linear feature to use.
    # Under DP the baseline runs only with a share of the budget (epsilon_share); "auto" is then off.
    features: str = "auto"
    # Its rounds (0: strategy.rounds) and learning rate (0: the feature's measured recipe).
    rounds: int = 0
    lr: float = 0.0
    # privacy.mode 'local': the part of privacy.target_epsilon its DP-SGD spends (the model's rounds
    # spend the rest, so the job's total stays within the target; privacy.json states the split).
    epsilon_share: float = 0.0
    # Under strategy.final_model best_held_out the baseline is one more candidate: where its held-out
    # accuracy beats the model's, the job exports it (model/) and keeps the trained model beside it.
    export_if_better: bool = True

    def __post_init__(self) -> None:
        known = ("auto", "off", *TEXT_FEATURES, *IMAGE_FEATURES)
        _require(self.features in known, "baseline.features", f"must be one of {', '.join(known)}")
        _require(self.rounds >= 0, "baseline.rounds", "must be >= 0 (0: strategy.rounds)")
        _require(self.lr >= 0, "baseline.lr", "must be >= 0 (0: the recipe's)")
        _require(0 <= self.epsilon_share < 1, "baseline.epsilon_share", "must be in [0, 1)")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking (common/tracking.py): TensorBoard event files and MLflow runs, written by
    the coordinator only (what it already holds: the config, per-round metrics, privacy figures)."""

    tensorboard: bool = False
    mlflow: bool = False
    # MLflow tracking URI; "": a SQLite store in the output folder (output_dir/mlflow.db).
    mlflow_uri: str = ""
    # MLflow experiment name; "": the experiment's name.
    mlflow_experiment: str = ""


@dataclass(frozen=True)
class TransportConfig:
    """Compressed updates (common/compress.py): how weights travel between sites and coordinator.
    Applied after DP noise, so it is post-processing and leaves epsilon unchanged."""

    # "none" (float32), "fp16", "bf16" or "int8" (symmetric, one scale per tensor or per block).
    quantize: Literal["none", "fp16", "bf16", "int8"] = "none"
    # int8 only: elements per scale block (0: one scale per tensor).
    block_size: int = 0
    # Fraction of each update's elements a site sends (largest magnitudes; the rest is kept at the
    # site and added to the next round's update: error feedback). 0: off (dense).
    topk: float = 0.0
    # Whether the coordinator's broadcast of the global model is quantised the same way.
    broadcast: bool = False

    def __post_init__(self) -> None:
        _require(self.block_size >= 0, "transport.block_size", "must be >= 0 (0: one scale per tensor)")
        _require(0 <= self.topk < 1, "transport.topk", "must be in [0, 1) (0: dense)")
        _require(
            self.block_size == 0 or self.quantize == "int8",
            "transport.block_size",
            f"is for transport.quantize=int8 (got '{self.quantize}'); leave it 0",
        )
        _require(
            not self.broadcast or self.quantize != "none",
            "transport.broadcast",
            "quantises the global model as transport.quantize says; set transport.quantize (fp16, bf16 or int8)",
        )


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole federated experiment."""

    name: str = "default"
    seed: int = 0
    # Where run folders are written (relative paths: see resolve_path).
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)

    def _check_secagg(self) -> None:
        _secagg_checks(self)

    def __post_init__(self) -> None:
        _require(bool(self.name.strip()), "name", "must not be empty")
        _require(0 <= self.seed < 2**32, "seed", f"must be in [0, 2^32); got {self.seed}")
        if self.model.is_text != self.data.is_text:
            kind = "text" if self.model.is_text else "image"
            raise ConfigError(
                f"model.name '{self.model.name}' is a {kind} model but data.source "
                f"'{self.data.source}' is not {kind} data"
            )
        _require(
            self.strategy.min_sites <= self.data.num_sites,
            "strategy.min_sites",
            f"({self.strategy.min_sites}) exceeds data.num_sites ({self.data.num_sites})",
        )
        st, need, n = self.strategy, self.strategy.min_replies(), self.data.num_sites
        for key, frac in (("fraction_train", st.fraction_train), ("fraction_evaluate", st.fraction_evaluate)):
            _require(
                frac == 0 or int(n * frac) >= 1,
                f"strategy.{key}",
                f"({frac:g}) x data.num_sites ({n}) selects no site per round (Flower would fall back to "
                "strategy.min_sites without a word); raise it",
            )
        _require(
            st.num_selected <= n,
            "strategy.num_selected",
            f"({st.num_selected}) exceeds data.num_sites ({n})",
        )
        _require(
            st.min_sites >= need,
            "strategy.min_sites",
            f"({st.min_sites}) is below the {need} valid updates strategy '{st.name}' needs per round with "
            f"strategy.num_malicious={st.num_malicious}; raise strategy.min_sites (and data.num_sites)",
        )
        _require(
            not (self.privacy.local and self.train.class_weight == "balanced"),
            "train.class_weight",
            "'balanced' is computed from the site's label counts, a statistic outside DP-SGD's per-record "
            "accounting; under privacy.mode 'local' give one weight per class (e.g. '1.9,0.7', from a known "
            "prevalence) or 'none'",
        )
        _require(
            not (self.privacy.local and self.train.precision != "fp32"),
            "train.precision",
            f"'{self.train.precision}' is for non-private training; DP-SGD runs in fp32 (per-sample "
            "clipping needs exact gradient norms)",
        )
        for key in ("crash_site", "corrupt_site", "label_flip_site"):
            _require(
                getattr(self.faults, key) < self.data.num_sites,
                f"faults.{key}",
                f"({getattr(self.faults, key)}) is not a site of this simulation "
                f"(data.num_sites={self.data.num_sites})",
            )
        _require(
            self.train.augment == "none" or not self.model.is_text,
            "train.augment",
            f"'{self.train.augment}' is image augmentation; model '{self.model.name}' reads text (use 'none')",
        )
        _require(
            self.train.augment == "none" or self.model.name != "linear",
            "train.augment",
            f"'{self.train.augment}' augments images in training; model 'linear' reads features computed once "
            "per site (use 'none')",
        )
        _require(
            not (self.privacy.local and self.train.augment_multiplicity > 1)
            or self.privacy.grad_sample_mode in ("auto", "hooks"),
            "privacy.grad_sample_mode",
            f"'{self.privacy.grad_sample_mode}' cannot average a record's augmented copies before clipping "
            "(train.augment_multiplicity > 1); use 'hooks' or 'auto'",
        )
        if self.privacy.mode == "central":
            _require(
                st.name not in ROBUST and st.name != "qfedavg",
                "strategy.name",
                f"'{st.name}' cannot be used with privacy.mode 'central': the noise covers one site's "
                "clipped update in an equal-weight mean, not a median, trimmed mean, selection or "
                "loss-weighted step; use fedavg, fedprox or a server optimizer "
                f"({', '.join(SERVER_OPTIMIZERS)})",
            )
            _require(
                st.reject_norm_ratio == 0,
                "strategy.reject_norm_ratio",
                "must be 0 with privacy.mode 'central': rejecting a site by the round's median norm makes which "
                "updates are summed depend on the other sites, beyond the one-site sensitivity the noise covers",
            )
        if self.secagg.enabled:
            self._check_secagg()
        _personalize_checks(self)
        _baseline_checks(self)
        if st.name == "qfedavg" and self.privacy.mode != "off":
            _require(
                self.privacy.site_metrics == "exact",
                "strategy.name",
                "'qfedavg' weights sites by their training loss, which DP sites release only with "
                "privacy.site_metrics 'exact' (unprotected); use another strategy or set it",
            )


def _baseline_checks(exp: ExperimentConfig) -> None:
    """A baseline (common/baseline.py) the job asks for but cannot have."""
    b = exp.baseline
    _require(
        not b.epsilon_share or exp.privacy.local,
        "baseline.epsilon_share",
        f"({b.epsilon_share:g}) splits a local-DP budget; privacy.mode is '{exp.privacy.mode}' (set it to 0)",
    )
    _require(
        not b.epsilon_share or exp.privacy.target_epsilon is not None,
        "baseline.epsilon_share",
        "needs privacy.target_epsilon (a budget to split); with privacy.noise_multiplier set it to 0",
    )
    if b.features in ("auto", "off"):
        return
    _require(
        exp.privacy.mode != "central",
        "baseline.features",
        f"('{b.features}') cannot run under privacy.mode 'central'; set it to 'off'",
    )
    _require(
        (b.features in TEXT_FEATURES) == exp.data.is_text,
        "baseline.features",
        f"('{b.features}') does not read {'text' if exp.data.is_text else 'image'} data",
    )


def _personalize_checks(exp: ExperimentConfig) -> None:
    """What per-site personalisation rules out (common/personalize.py, docs/privacy.md)."""
    st = exp.strategy
    _require(
        st.local_finetune == 0 or exp.privacy.mode == "off",
        "strategy.local_finetune",
        f"needs privacy.mode 'off': its steps would train on the site's records outside DP-SGD and the site's "
        f"evaluation would release what they learned, uncharged (privacy.mode is '{exp.privacy.mode}')",
    )
    _require(
        st.local_finetune == 0 or st.fraction_evaluate == 1,
        "strategy.local_finetune",
        f"runs in every site's last evaluation, so it needs strategy.fraction_evaluate 1 "
        f"(got {st.fraction_evaluate:g}: the sites left out would never fine-tune)",
    )
    if st.personalize == "off":
        return
    _require(
        exp.model.name != "linear",
        "strategy.personalize",
        "'head' needs a model with a body beside its head; model 'linear' is only a head (use a ResNet or BERT)",
    )
    _require(
        not exp.secagg.enabled,
        "strategy.personalize",
        "'head' is not supported with secagg.enabled (secure aggregation of body-only updates is untested)",
    )
    _require(
        exp.privacy.mode != "central",
        "strategy.personalize",
        "'head' cannot be used with privacy.mode 'central': each site's head would train outside any DP "
        "mechanism and its evaluation would release what it learned; use privacy.mode 'local' (the head is "
        "trained by the same DP-SGD steps as the body) or 'off'",
    )


def _secagg_checks(exp: ExperimentConfig) -> None:
    """What secure aggregation rules out: the coordinator sees only the sum of the updates."""
    st = exp.strategy
    _require(
        st.name not in ROBUST and st.name != "qfedavg",
        "strategy.name",
        f"'{st.name}' needs each site's update (a median, trimmed mean, selection or loss weighting); under "
        "secagg.enabled the coordinator sees only their sum: use fedavg, fedprox or a server optimizer "
        f"({', '.join(SERVER_OPTIMIZERS)})",
    )
    _require(
        st.min_sites >= 2,
        "strategy.min_sites",
        "must be >= 2 under secagg.enabled (a sum of one update is that update)",
    )
    _require(
        st.reject_norm_ratio == 0,
        "strategy.reject_norm_ratio",
        "must be 0 under secagg.enabled: the coordinator never sees an update's norm",
    )
    _require(
        exp.privacy.mode != "central" or exp.privacy.clip_side == "client",
        "privacy.clip_side",
        "must be 'client' with privacy.mode 'central' under secagg.enabled: the coordinator cannot clip "
        "updates it never sees",
    )
    _require(
        exp.transport.quantize == "none" and exp.transport.topk == 0,
        "transport.quantize",
        "must be 'none' (and transport.topk 0) under secagg.enabled: SecAgg+ quantises the update itself",
    )


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {why}")


# --------------------------------------------------------------------------- loading


def load(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Build an ExperimentConfig from a YAML file plus flat dotted-key overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(Path(path))
    source = str(path) if path is not None else "<defaults>"
    _check_override_keys(overrides or {})
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    return _build(ExperimentConfig, raw, prefix="", source=source)


def _check_override_keys(overrides: Mapping[str, Any]) -> None:
    """An override (``--set``, ``--run-config``, a sweep's grid) must name a known dotted key;
    blamed on the override, not on the YAML file it would have changed."""
    known = flat_keys()
    for key in overrides:
        if not str(key).strip():
            raise ConfigError("an override has an empty key; overrides are key=value, e.g. train.lr=0.01")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; run with a key from README's config reference"
            raise ConfigError(f"unknown config key '{key}' in the overrides{hint}")


def read_yaml(path: Path) -> dict[str, Any]:
    return yamlfile.read_mapping(path, "experiment file")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) for YAML/JSON output."""
    out = dataclasses.asdict(cfg)
    return _listify(out)


def dump(cfg: ExperimentConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flat_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every overridable dotted key, e.g. ``train.lr``."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += flat_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def replace(cfg: ExperimentConfig, **changes: Any) -> ExperimentConfig:
    """Return a copy with dotted keys changed, re-validated (e.g. ``{"data.labels": (...)}``)."""
    raw = to_dict(cfg)
    for key, value in changes.items():
        _set_dotted(raw, key.replace("__", "."), value)
    return _build(ExperimentConfig, raw, prefix="", source="<replace>")


def _listify(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _listify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_listify(v) for v in obj]
    return obj


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    section = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{section}' in {source} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' in {source}{_suggest(prefix, str(unknown[0]), names)}; "
            f"known keys in {section}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in raw.items():
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{key}.", source)
        else:
            kwargs[name] = _coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the unknown-key check
        raise ConfigError(f"config section '{section}': {exc}") from None


def _suggest(prefix: str, name: str, names: set[str]) -> str:
    """A hint for an unknown key: a close name in its section, the section a bare key belongs in, or
    the nested form of a dotted key written in YAML."""
    if f"{prefix}{name}" in flat_keys():
        head, _, tail = name.partition(".")
        return f"; in a YAML file write dotted keys nested ('{head}:' then '  {tail}: ...')"
    close = difflib.get_close_matches(name, sorted(names), n=1)
    if close:
        return f"; did you mean '{prefix}{close[0]}'?"
    elsewhere = [k for k in flat_keys() if k.startswith(prefix) and k.rsplit(".", 1)[-1] == name]
    return f"; did you mean '{elsewhere[0]}'?" if elsewhere else ""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check and convert one value to its declared type; raise naming the key."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:
        if isinstance(value, str):  # run-config overrides carry lists as "a,b,c"
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list; got {value!r}")
        return tuple(str(v) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"config key '{key}' must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}' must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a number; got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' must be a number; got {value!r}") from None
        if out != out or out in (float("inf"), float("-inf")):
            raise ConfigError(f"config key '{key}' must be finite; got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a string; got {value!r}")
        return str(value)
    raise ConfigError(f"config key '{key}' has unsupported type {tp}")  # pragma: no cover


# --------------------------------------------------------------------------- run config

EXPERIMENT_KEY = "experiment"
# Run-config key naming a stopped run's folder to continue (server/app.py); not an experiment key.
RESUME_KEY = "resume"


def load_from_run_config(run_config: Mapping[str, Any], app_dir: Path) -> ExperimentConfig:
    """Resolve an experiment from a Flower run config.

    ``experiment`` names the YAML file (relative to the app folder or the project root);
    every other key is a dotted override. Empty strings mean "not overridden" because
    Flower only accepts overrides for keys declared in pyproject.toml, where each key is
    declared with "" as its default.
    """
    exp_path = str(run_config.get(EXPERIMENT_KEY, "") or "")
    path: Path | None = None
    if exp_path:
        candidates = (
            [Path(exp_path)]
            if Path(exp_path).is_absolute()
            else [
                app_dir / exp_path,
                resolve_path(exp_path),
            ]
        )
        path = next((p for p in candidates if p.is_file()), candidates[-1])
    overrides = {k: v for k, v in run_config.items() if k not in (EXPERIMENT_KEY, RESUME_KEY) and v != ""}
    return load(path, overrides)


def project_root() -> Path:
    """Base for relative paths in configs: $CONFIDE_ROOT, else the working directory.

    ``flwr run .`` from the project folder starts the local SuperLink there, so relative
    paths such as ``../shared/datasets/...`` resolve against the project folder.
    """
    return Path(os.environ.get("CONFIDE_ROOT") or Path.cwd())


def resolve_path(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (project_root() / p).resolve()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections to dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1} (what ``load`` takes)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
