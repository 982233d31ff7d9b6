"""Class-weighted loss (common/class_weight.py, ``train.class_weight``): the values it accepts, the
weights it computes (worked out by hand), that training uses them, and that local DP refuses what
DP-SGD would not honour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from common import config
from common.batches import make_loader
from common.class_weight import class_weights, parse, weighted_cross_entropy
from common.errors import ConfigError
from common.train import _loss, train

pytestmark = pytest.mark.unit
DEFAULT = "simulations/configs/default.yaml"


@pytest.mark.parametrize("value", ["balance", "1", "1,0", "1,-2", "1,nan", "a,b", ""])
def test_bad_values_are_refused_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match="train.class_weight"):
        parse(value)


def test_balanced_weights_are_n_over_k_times_class_count() -> None:
    # 4 records, classes present {0, 2}: w0 = 4 / (2 * 3), w2 = 4 / (2 * 1); absent class 1 weighs 0
    w = class_weights("balanced", np.array([0, 0, 0, 2]))
    assert w is not None
    assert w.tolist() == pytest.approx([4 / 6, 0.0, 2.0])
    assert class_weights("none", np.array([0, 1])) is None
    assert class_weights("1.5, 0.5", np.array([0, 1])).tolist() == [1.5, 0.5]


def test_the_weighted_loss_is_the_weighted_mean_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    l0, l1 = math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))
    got = weighted_cross_entropy(torch.tensor([0.5, 2.0]))(logits, labels)
    assert float(got) == pytest.approx((0.5 * l0 + 2.0 * l1) / 2.5, rel=1e-6)


class Points(torch.utils.data.Dataset):
    """1-D points, 90 of class 1 around +0.3 and 10 of class 0 around -0.3, overlapping."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.y = torch.tensor([1] * 90 + [0] * 10)
        self.x = (self.y.float() - 0.5) * 0.6 + torch.randn(100, generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i : i + 1], "labels": self.y[i]}

    @staticmethod
    def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def predicted_minority(weighting: str) -> int:
    torch.manual_seed(0)
    model = nn.Linear(1, 2)
    data = Points()
    cfg = config.replace(config.load(DEFAULT), train={"lr": 0.5, "local_epochs": 30, "optimizer": "sgd",
                                                       "class_weight": weighting}).train  # fmt: skip
    train(model, make_loader(data, 20, shuffle=True), cfg)
    with torch.no_grad():
        return int((model(data.x[:, None]).argmax(1) == 0).sum())


def test_training_uses_the_weights() -> None:
    """On 90/10 overlapping classes the plain loss predicts the minority class for few points;
    balanced weights move the threshold so that roughly the points left of it (about half) are."""
    plain, balanced = predicted_minority("none"), predicted_minority("balanced")
    assert plain < 15 < balanced, (plain, balanced)


def test_the_loss_train_picks() -> None:
    cfg = config.replace(config.load(DEFAULT), train={"class_weight": "none"}).train
    assert isinstance(_loss(cfg, make_loader(Points(), 4, shuffle=False)), nn.CrossEntropyLoss)


def test_local_dp_refuses_balanced_weights_and_keeps_explicit_ones() -> None:
    """Balanced weights are a statistic of the site's records; explicit ones are a setting."""
    sets = {"privacy.mode": "local", "privacy.target_epsilon": 8}
    with pytest.raises(ConfigError, match="train.class_weight.*label counts"):
        config.load(DEFAULT, {**sets, "train.class_weight": "balanced"})
    assert config.load(DEFAULT, {**sets, "train.class_weight": "1.9,0.7"}).train.class_weight == "1.9,0.7"


def test_explicit_weights_must_match_the_models_classes() -> None:
    loss = weighted_cross_entropy(torch.tensor([1.0, 2.0]))
    with pytest.raises(ConfigError, match="2 weights but the model has 3 classes"):
        loss(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))


def test_central_dp_keeps_balanced_weights() -> None:
    """Central DP protects a site's whole contribution, its label counts included."""
    exp = config.load(DEFAULT, {"train.class_weight": "balanced", "privacy.mode": "central"})
    assert exp.train.class_weight == "balanced"
