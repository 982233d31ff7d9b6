"""common/privacy/governance/release.py: what leaves a site beside its weights.

Proves: 'withhold' sends weight 1 and nothing computed from records (no step count or training
time either: at batch size 1 the steps are the record count); 'exact' sends the true values;
'noisy' evaluation releases count, accuracy and loss whose noise has the standard deviation the
ledger is charged for (sigma * sqrt(3) on the count, measured over many releases), and with
tiny noise equals the values computed by hand (per-record loss clipped at LOSS_CAP).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from common import config as config_mod
from common.privacy.governance import release
from common.train import TrainResult

pytestmark = pytest.mark.unit


class Fixed(nn.Module):
    """Logits that do not depend on parameters: class 0 with probability p for every record."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.logit = math.log(p / (1 - p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.full((len(x),), self.logit), torch.zeros(len(x))], dim=1)


def loader(labels: list[int]):
    y = torch.tensor(labels)
    return [{"pixel_values": torch.zeros(len(y), 1, 2, 2), "labels": y}]


def privacy(**kw: object) -> config_mod.PrivacyConfig:
    return config_mod.load(None, {"privacy.mode": "local", **kw}).privacy


def test_train_metrics_per_level() -> None:
    """At batch size 1 a round's step count is the record count (40 steps for 40 records), and the
    training time grows with it: under DP they leave the site only where the count itself does
    (``exact``); without DP everything is exact."""
    result = TrainResult(loss=0.7, num_examples=40, steps=40, seconds=1.0)
    counts = {"train_loss", "num-examples", "train_steps", "train_seconds"}
    withheld = release.train_metrics(privacy(), 40, result)
    assert withheld == {"weight": 1.0}
    central = release.train_metrics(privacy(**{"privacy.mode": "central"}), 40, result)
    assert central == {"weight": 1.0}
    exact = release.train_metrics(privacy(**{"privacy.site_metrics": "exact"}), 40, result)
    assert exact["num-examples"] == 40 and exact["train_loss"] == 0.7 and exact["weight"] == 40
    assert exact["train_steps"] == 40 and exact["train_seconds"] == 1.0
    off = release.train_metrics(config_mod.load(None, {}).privacy, 40, result)
    assert off["num-examples"] == 40 and off["train_steps"] == 40  # no DP: no guarantee claimed, all exact
    noisy = release.train_metrics(privacy(**{"privacy.site_metrics": "noisy"}), 40, result)
    assert not counts & set(noisy) and set(noisy) == {"weight"} and noisy["weight"] >= 1.0


def test_noisy_evaluation_matches_hand_values_and_its_noise_is_what_is_charged() -> None:
    labels = [0] * 70 + [1] * 30  # the model always predicts class 0 (p = 0.9)
    p = 0.9
    loss_by_hand = (70 * -math.log(p) + 30 * min(-math.log(1 - p), release.LOSS_CAP)) / 100
    exact = release.noisy_evaluation(Fixed(p), loader(labels), sigma=1e-9)
    assert exact["weight"] == pytest.approx(100) and exact["accuracy"] == pytest.approx(0.7)
    assert exact["loss"] == pytest.approx(loss_by_hand, rel=1e-5)
    sigma = 2.0
    counts = np.array([release.noisy_evaluation(Fixed(p), loader(labels), sigma)["weight"] for _ in range(600)])
    expected = sigma * math.sqrt(3)  # L2 sensitivity sqrt(3) of (count, correct, loss sum / cap)
    assert abs(counts.std(ddof=1) - expected) / expected < 5 / math.sqrt(2 * len(counts))
    assert abs(counts.mean() - 100) < 5 * expected / math.sqrt(len(counts))


def test_release_entry_is_one_gaussian_mechanism() -> None:
    entry = release.release_entry(privacy(**{"privacy.release_noise_multiplier": 7.0}), "evaluation")
    assert (entry["noise_multiplier"], entry["sample_rate"], entry["steps"]) == (7.0, 1.0, 1)
