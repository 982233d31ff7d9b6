"""The simple baseline a job reports beside its model: a linear layer on fixed features.

Confide's promise is a model never worse than the simple baseline on the same sites. So every job
(``baseline.features``, default "auto") first trains, federated on the same sites and through the
same pipeline (strategy checks, compression, SecAgg+, the sites' policies and ledgers), a linear
layer on pixels (images) or hashed n-grams (text), then the model; the round lines, the model card
and the study report show both. Both sides derive the baseline's experiment from the job's with
``baseline_experiment``; the coordinator sends only the image side it read from the data (every
site must build the same layer).

Under local DP the baseline's DP-SGD spends ``baseline.epsilon_share`` of
``privacy.target_epsilon`` and the model's rounds the rest (``model_experiment``): by composition
the job's total stays within the target, and every ledger charge is the site's as always. Without
a share, "auto" runs no baseline under DP (it would spend budget the user did not assign).
"""

from __future__ import annotations

from dataclasses import dataclass

from common import config as config_mod
from common.config import ROBUST, ExperimentConfig

PHASE = "baseline"  # the message config's "phase" and the ledger entries' tag for its rounds


@dataclass(frozen=True)
class Recipe:
    """A linear feature's training recipe, measured on the shipped data sets (docs/recipes.md)."""

    lr: float
    batch_size: int
    local_epochs: int
    feature_scale: float
    weight_decay: float


RECIPES = {
    "pixels": Recipe(lr=0.1, batch_size=64, local_epochs=1, feature_scale=1.0, weight_decay=0.002),
    "scatter": Recipe(lr=0.1, batch_size=64, local_epochs=1, feature_scale=1.0, weight_decay=0.002),
    "ngrams": Recipe(lr=1.0, batch_size=128, local_epochs=3, feature_scale=8.0, weight_decay=0.0),
    "encoder": Recipe(lr=1.0, batch_size=128, local_epochs=3, feature_scale=8.0, weight_decay=0.0),
}


def features(exp: ExperimentConfig) -> str | None:
    """The baseline's feature, or None when the job has no baseline (``why_off`` says why)."""
    return None if why_off(exp) else _chosen(exp)


def _chosen(exp: ExperimentConfig) -> str:
    if exp.baseline.features != "auto":
        return exp.baseline.features
    return "ngrams" if exp.data.is_text else "pixels"


def why_off(exp: ExperimentConfig) -> str:
    """Why the job trains no baseline ("" when it does)."""
    b = exp.baseline
    if b.features == "off":
        return "baseline.features is off"
    if exp.model.name == "linear" and exp.model.features == _chosen(exp):
        return f"the model is the baseline itself (linear on {exp.model.features})"
    if exp.strategy.personalize != "off":
        return (
            "strategy.personalize 'head' (each site keeps its own head; the card sets it against the site's "
            "local-only model)"
        )
    if exp.privacy.mode == "central":
        return "privacy.mode 'central' (the coordinator's mechanism covers the model's rounds only)"
    if exp.privacy.local and b.epsilon_share == 0:
        return "privacy.mode 'local' and no budget assigned to it (set baseline.epsilon_share, e.g. 0.2)"
    return ""


def model_experiment(exp: ExperimentConfig) -> ExperimentConfig:
    """The job as the model's rounds run it: under local DP with a baseline, its target epsilon less
    the baseline's share."""
    if features(exp) is None or not exp.privacy.local:
        return exp
    target = exp.privacy.target_epsilon
    assert target is not None
    return config_mod.replace(exp, **{"privacy.target_epsilon": target * (1 - exp.baseline.epsilon_share)})


def baseline_experiment(exp: ExperimentConfig, image_size: int = 0) -> ExperimentConfig:
    """The baseline's experiment: the job's data, sites, privacy mode, compression and SecAgg+, with
    a linear model on the baseline's feature trained by its recipe. ``image_size``: the side of the
    job's images (the layer's width depends on it)."""
    feature = features(exp)
    assert feature is not None, why_off(exp)
    recipe = RECIPES[feature]
    st = exp.strategy
    changes: dict[str, object] = {
        "name": f"{exp.name}-baseline",
        "model.name": "linear",
        "model.features": feature,
        "model.head_init": "random",
        "model.feature_scale": recipe.feature_scale,
        "model.lora_r": 0,
        "model.pooling": "cls",
        "model.weights": "",
        "model.weights_partial": False,
        "train.lr": exp.baseline.lr or recipe.lr,
        "train.head_lr": 0.0,
        "train.optimizer": "sgd",
        "train.momentum": 0.9,
        "train.weight_decay": recipe.weight_decay,
        "train.batch_size": recipe.batch_size,
        "train.local_epochs": recipe.local_epochs,
        "train.max_steps": 0,
        "train.head_only_rounds": 0,
        "train.precision": "fp32",
        "train.augment": "none",
        "train.augment_multiplicity": 1,
        "train.ema_decay": 0.0,
        # Robust aggregation stays (a poisoning site would poison the baseline too); otherwise FedAvg.
        "strategy.name": st.name if st.name in ROBUST else "fedavg",
        "strategy.rounds": exp.baseline.rounds or st.rounds,
        "strategy.personalize": "off",
        "strategy.local_finetune": 0,
        "baseline.features": "off",
        "baseline.epsilon_share": 0.0,
    }
    if image_size and not exp.data.is_text:
        changes["model.image_size"] = image_size
    if exp.privacy.local:
        assert exp.privacy.target_epsilon is not None
        changes["privacy.target_epsilon"] = exp.privacy.target_epsilon * exp.baseline.epsilon_share
    return config_mod.replace(exp, **changes)
