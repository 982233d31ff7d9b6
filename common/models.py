"""Model registry: ``create_model(cfg, num_labels)`` builds the same network everywhere.

- ``bert``: any Hugging Face BERT-family checkpoint with a sequence-classification head
  (a local folder, a hub name when online, or the bundled all-MiniLM-L6-v2).
- ``resnet18/34/50``: torchvision ResNets with configurable input channels and classes,
  a small-image stem for 28-32 px inputs, and optional pretrained weights from a file.
- ``resnet8/20``: CIFAR-style ResNets for small images (8-32 px) with GroupNorm and
  weight-standardized convolutions, trained from scratch, e.g. under DP-SGD
  (``common.resnet_small``); optional weights from a file.
- ``linear``: a linear classifier on fixed features computed at each site (``model.features``:
  pixels, wavelet scattering, hashed n-grams, frozen-encoder embeddings; ``common.features``).

The server and every site call this with the same config and label count, so their
state_dict keys and shapes match; the head is seeded so even initial weights agree.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from common.checkpoints import checkpoint_path, first_line, load_tokenizer
from common.config import MINILM, ExperimentConfig, ModelConfig, resolve_path
from common.errors import ConfigError

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[[ModelConfig, int], nn.Module]] = {}


def register(name: str) -> Callable[[Callable[[ModelConfig, int], nn.Module]], Callable]:
    def deco(fn: Callable[[ModelConfig, int], nn.Module]) -> Callable:
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def create_model(cfg: ModelConfig, num_labels: int, seed: int = 0) -> nn.Module:
    """Build the configured model for ``num_labels`` classes (deterministic given seed)."""
    if cfg.name not in _REGISTRY:
        raise ConfigError(f"config key 'model.name': unknown model '{cfg.name}'; known: {available()}")
    if num_labels < 2:
        raise ConfigError(f"a classifier needs at least 2 labels, got {num_labels} (config key 'data.labels')")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _REGISTRY[cfg.name](cfg, num_labels)


def build_model(exp: ExperimentConfig, num_labels: int) -> nn.Module:
    """The one place that decides the variant every party builds for an experiment.

    Server and sites call this, so their exchanged tensors have the same names and shapes:
    LoRA adapters when ``model.lora_r`` > 0, DP-SGD-compatible layers when privacy is local.
    """
    surgery = exp.privacy.local or exp.model.norm == "group"
    # A weights file is loaded AFTER the BatchNorm -> GroupNorm surgery: loaded before, every norm
    # layer's affine weight and bias would be replaced by the new GroupNorm's fresh ones.
    late_weights = surgery and exp.model.name.startswith("resnet") and bool(exp.model.weights)
    cfg = dataclasses.replace(exp.model, weights="") if late_weights else exp.model
    model = create_model(cfg, num_labels, seed=exp.seed)
    if exp.model.head_init == "label_names" and exp.data.labels and cfg.name == "linear":
        from common.features import init_from_label_names as init_linear

        init_linear(model.classifier, cfg, exp.data.labels)
    elif exp.model.head_init == "label_names" and exp.data.labels:  # the server always knows them
        from common.head_init import init_from_label_names

        init_from_label_names(model, load_tokenizer(checkpoint_path(cfg)), exp.data.labels, cfg.max_length)
    if exp.model.lora_r:
        model = _with_lora(model, exp.model, exp.seed)
    if surgery:
        from common.privacy.mechanism.model_surgery import dp_compatible

        model, changes = dp_compatible(model)
        if changes:
            log.info("%s: %s", "DP-SGD compatibility" if exp.privacy.local else "model.norm=group", "; ".join(changes))
    if late_weights:
        # BatchNorm's affine weights seed GroupNorm's
        _load_weights(model, resolve_path(exp.model.weights), exp.model.weights_partial)
    return model


def _with_lora(model: nn.Module, cfg: ModelConfig, seed: int) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        try:
            peft_model = get_peft_model(model, lora)
        except ValueError as exc:
            raise ConfigError(f"config key 'model.lora_targets': {first_line(exc)}") from None
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    log.info(
        "LoRA r=%d on %s: %s trainable parameters (adapters + head)",
        cfg.lora_r,
        ",".join(cfg.lora_targets),
        f"{trainable:,}",
    )
    return peft_model


def merged(model: nn.Module) -> nn.Module:
    """A plain model for export: LoRA adapters merged into the base weights."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


# --------------------------------------------------------------------------- BERT


@register("bert")
def _bert(cfg: ModelConfig, num_labels: int) -> nn.Module:
    import transformers
    from transformers import AutoModelForSequenceClassification

    path = checkpoint_path(cfg)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" notice
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, ignore_mismatched_sizes=True
        )
    except OSError as exc:
        raise ConfigError(
            f"config key 'model.checkpoint': cannot load '{cfg.checkpoint}' "
            f"(not a local folder, and the hub is unreachable or has no such model): {first_line(exc)}"
        ) from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    if getattr(model.config, "model_type", "") not in (
        "bert",
        "roberta",
        "distilbert",
        "xlm-roberta",
        "electra",
        "deberta",
        "deberta-v2",
        "albert",
        "modernbert",
        "camembert",
    ):
        log.warning(
            "model.checkpoint '%s' is a '%s' model, not BERT-family; proceeding",
            cfg.checkpoint,
            model.config.model_type,
        )
    log.info("bert: loaded pretrained weights from %s (%d labels, new classification head)", path, num_labels)
    return use_pooling(model, cfg.pooling)


class MeanPooler(nn.Module):
    """Attention-masked mean of the last hidden states, in place of BERT's [CLS] dense + tanh pooler
    (no weights). The encoder's forward pre-hook hands it the batch's attention mask."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def take_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask, self.mask = self.mask, None
        weights = (hidden.new_ones(hidden.shape[:2]) if mask is None else mask.to(hidden.dtype)).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def use_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """Apply ``model.pooling`` to a BERT sequence classifier (also when reloading an export)."""
    if pooling == "cls":
        return model
    encoder = getattr(model, "bert", None)
    if encoder is None or not hasattr(encoder, "pooler"):
        raise ConfigError(
            f"config key 'model.pooling': 'mean' needs a BERT-architecture checkpoint; this one is "
            f"'{getattr(model.config, 'model_type', type(model).__name__)}'"
        )
    pooler = MeanPooler()
    encoder.pooler = pooler
    encoder.register_forward_pre_hook(pooler.take_mask, with_kwargs=True)  # a bound method: survives deepcopy
    log.info("bert: mean pooling over tokens (model.pooling=mean) in place of the [CLS] pooler")
    return model


# --------------------------------------------------------------------------- linear


class LinearOutput:
    """What the linear model returns: its ``logits``, read like a Hugging Face classifier's output."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class LinearModel(nn.Module):
    """Multinomial logistic regression on fixed features (``model.features``): one linear layer, the
    only trained and exchanged tensors. The features are computed from records at the site
    (``common.features.FeatureSet``), so batches carry ``features``."""

    def __init__(self, width: int, num_labels: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(width, num_labels)
        # Zero weights: the convex problem's usual start (uniform predictions), the same everywhere.
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: torch.Tensor) -> LinearOutput:
        return LinearOutput(self.classifier(features))


@register("linear")
def _linear(cfg: ModelConfig, num_labels: int) -> nn.Module:
    from common.features import width

    model = LinearModel(width(cfg), num_labels)
    log.info("linear: %s features (%d wide), %d labels", cfg.features, model.classifier.in_features, num_labels)
    return model


# --------------------------------------------------------------------------- ResNet


def _resnet(builder_name: str) -> Callable[[ModelConfig, int], nn.Module]:
    def build(cfg: ModelConfig, num_labels: int) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, builder_name)(weights=None, num_classes=num_labels)
        if cfg.small_input:
            model.conv1 = nn.Conv2d(cfg.in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        elif cfg.in_channels != 3:
            model.conv1 = nn.Conv2d(cfg.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return _weights_or_random(model, cfg, builder_name)

    return build


for _name in ("resnet18", "resnet34", "resnet50"):
    register(_name)(_resnet(_name))


def _small_resnet(depth: int) -> Callable[[ModelConfig, int], nn.Module]:
    def build(cfg: ModelConfig, num_labels: int) -> nn.Module:
        from common.resnet_small import small_resnet

        return _weights_or_random(small_resnet(depth, cfg.in_channels, num_labels), cfg, f"resnet{depth}")

    return build


for _depth in (8, 20):
    register(f"resnet{_depth}")(_small_resnet(_depth))


def _weights_or_random(model: nn.Module, cfg: ModelConfig, name: str) -> nn.Module:
    """Load ``model.weights`` when given; otherwise keep the random init and say so in the log."""
    if cfg.weights:
        _load_weights(model, resolve_path(cfg.weights), cfg.weights_partial)
    else:
        log.info("%s: no pretrained weights file given (model.weights); random init", name)
    return model


# The classification head is new for every job (its own label set), so a weights file never has to set it.
HEAD_PREFIXES = ("fc.", "classifier.")


def _load_weights(model: nn.Module, path: Path, partial: bool = False) -> None:
    """Load a local state_dict file. Every tensor of the network but its head must come from it,
    unless ``partial`` (model.weights_partial): then only the matching ones, the rest logged."""
    state = read_state_dict(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ConfigError(f"config key 'model.weights': no tensor in {path} matches the model")
    body = [k for k in own if not k.startswith(HEAD_PREFIXES) and not k.endswith("num_batches_tracked")]
    fresh = [k for k in body if k not in usable]
    if fresh and not partial:
        k = fresh[0]
        why = (
            f"shape {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} here"
            if k in state
            else "not in the file"
        )
        raise ConfigError(
            f"config key 'model.weights': {path} sets {len(body) - len(fresh)} of the model's {len(body)} tensors "
            f"outside its head ({k}: {why}); it was saved for another architecture or input shape. Set "
            "model.weights_partial: true to load only the matching tensors and train the rest from random init"
        )
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d pretrained tensors from %s", len(usable), path)
    if fresh:
        log.warning(
            "model.weights_partial: %d of %d tensors outside the head start from random init (e.g. %s)",
            len(fresh),
            len(body),
            fresh[0],
        )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A local state_dict file (``model.weights``): a mapping of names to tensors, read without
    running code from it."""
    if path.is_dir():
        raise ConfigError(f"config key 'model.weights': {path} is a directory; a state_dict file is expected")
    if not path.is_file():
        raise ConfigError(f"config key 'model.weights': file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's own text for an unreadable or pickled file advises weights_only=False, which would
        # run code from the file: not a fix Confide will suggest.
        why = "not a PyTorch file" if "weights_only" in str(exc) or "pickle" in str(exc) else first_line(exc)
        raise ConfigError(
            f"config key 'model.weights': cannot read {path} as a state_dict of tensors ({why}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(
            f"config key 'model.weights': {path} holds a {type(state).__name__}, not a state_dict "
            "(a mapping of tensor names to tensors); save one with torch.save(model.state_dict(), path)"
        )
    return state


def check_model_source(exp: ExperimentConfig) -> None:
    """The model's files, checked before a simulation starts (a missing checkpoint would otherwise
    surface only when the ServerApp builds the model, after the simulation engine's start-up, or after
    transformers' retries against an unreachable hub): ``model.checkpoint`` for BERT (the bundled
    package, a local Hugging Face folder, or a hub name that is cached or may be downloaded),
    ``model.weights`` for ResNets (a readable state_dict of tensors), and at least 2 labels."""
    if len(exp.data.labels) == 1:
        raise ConfigError(
            f"config key 'data.labels' has one label, {exp.data.labels[0]!r}; a classifier needs at least 2"
        )
    cfg = exp.model
    if cfg.weights and cfg.name.startswith("resnet"):
        read_state_dict(resolve_path(cfg.weights))
    reads_checkpoint = cfg.name == "bert" or (cfg.name == "linear" and "encoder" in cfg.feature_names)
    if not reads_checkpoint or cfg.checkpoint == MINILM:
        if reads_checkpoint:
            checkpoint_path(cfg)  # the bundled package is installed
        return
    local = resolve_path(cfg.checkpoint)
    key = "config key 'model.checkpoint'"
    if local.is_file():
        raise ConfigError(f"{key}: {local} is a file; a checkpoint folder (config.json and weights) is expected")
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(f"{key}: {local} has no config.json; it is not a Hugging Face checkpoint folder")
        return
    # Not a hub name ('../x', './x', 'a/b/c'), or 'models/x' where a 'models' folder exists: a local path.
    if not _could_be_hub_name(cfg.checkpoint) or (local.parent.is_dir() and local.parent != resolve_path(".")):
        raise ConfigError(f"{key}: checkpoint folder not found: {local}")
    if _hub_offline() and not _hub_cached(cfg.checkpoint):
        raise ConfigError(
            f"{key}: '{cfg.checkpoint}' is not a local folder ({local}) nor in the Hugging Face cache, "
            "and the hub is offline (HF_HUB_OFFLINE)"
        )


def _could_be_hub_name(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _hub_offline() -> bool:
    import os

    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)
