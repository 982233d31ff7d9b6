"""Training loop learns on tiny data; evaluation reports accuracy/F1/loss correctly."""

from __future__ import annotations

import numpy as np
import torch

from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.data import RawData
from common.metrics import classification_scores, summarize_sites
from common.models import create_model
from common.train import evaluate, train


def tiny_images() -> RawData:
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(2), 32).astype(np.int64)
    images = np.where(labels[:, None, None, None] == 1, 200, 30).astype(np.uint8)
    images = np.clip(images + rng.integers(0, 40, (64, 1, 8, 8)), 0, 255).astype(np.uint8)
    return RawData(labels=labels, images=images)


def test_training_lowers_loss_and_fits_separable_images() -> None:
    exp = config_mod.load(None, {"train.lr": 0.001, "train.local_epochs": 8, "train.batch_size": 16})
    torch.manual_seed(0)
    model = create_model(exp.model, 2)
    ds = make_dataset(tiny_images(), exp.model)
    before = evaluate(model, make_loader(ds, 64, shuffle=False), 2)
    result = train(model, make_loader(ds, 16, shuffle=True), exp.train)
    after = evaluate(model, make_loader(ds, 64, shuffle=False), 2)
    assert result.steps == 32 and result.num_examples == 512 and result.seconds > 0
    assert after.loss < before.loss and after.accuracy == 1.0


def test_max_steps_caps_local_work() -> None:
    exp = config_mod.load(None, {"train.max_steps": 2, "train.local_epochs": 5})
    model = create_model(exp.model, 2)
    ds = make_dataset(tiny_images(), exp.model)
    assert train(model, make_loader(ds, 8, shuffle=True), exp.train).steps == 2


def test_text_batches_are_dynamically_padded() -> None:
    exp = config_mod.load(None, {"model.name": "bert", "data.source": "synthetic_text", "model.max_length": 16})
    raw = RawData(labels=np.array([0, 1]), texts=("hi", "a much longer sentence than the first one " * 5))
    ds = make_dataset(raw, exp.model)
    batch = next(iter(make_loader(ds, 2, shuffle=False)))
    assert batch["input_ids"].shape == (2, 16)  # truncated to max_length
    assert batch["attention_mask"][0].sum() == 3  # [CLS] hi [SEP]


def test_scores_and_site_summary() -> None:
    acc, f1 = classification_scores(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)
    assert acc == 0.75 and abs(f1 - (2 / 3 + 0.8) / 2) < 1e-9
    summary = summarize_sites({"a": {"accuracy": 1.0, "num_examples": 30}, "b": {"accuracy": 0.5, "num_examples": 10}})
    assert summary["accuracy"] == 0.875 and summary["worst_accuracy"] == 0.5 and summary["num_examples"] == 40


def test_head_lr_gives_the_head_its_own_learning_rate() -> None:
    """train.head_lr puts the classification head (ResNet fc, BERT classifier, also inside peft's
    wrapper) in its own parameter group; a model without a head is refused naming the key."""
    import pytest

    from common.errors import ConfigError
    from common.train import is_head, make_optimizer

    exp = config_mod.load(None, {"train.lr": 0.01, "train.head_lr": 0.5})
    model = create_model(exp.model, 2)
    groups = make_optimizer(model, exp.train).param_groups
    assert [g["lr"] for g in groups] == [0.01, 0.5]
    assert {id(p) for p in groups[1]["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(make_optimizer(model, config_mod.load(None, {"train.lr": 0.01}).train).param_groups) == 1
    assert is_head("base_model.model.classifier.modules_to_save.default.weight")
    assert not is_head("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight")
    with pytest.raises(ConfigError, match="train.head_lr"):
        make_optimizer(torch.nn.Sequential(torch.nn.Linear(2, 2)), exp.train)
