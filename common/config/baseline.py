"""The ``baseline`` section: the simple linear baseline reported beside every model."""

from __future__ import annotations

from dataclasses import dataclass

from common.config.model import IMAGE_FEATURES, TEXT_FEATURES
from common.config.require import _require


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
