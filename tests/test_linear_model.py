"""model.name 'linear': one linear layer on fixed features, federated and trained under DP-SGD like
any model; only the layer's tensors are exchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.data import LabelSet, RawData
from common.export import load_model, save_model
from common.models import build_model, create_model
from common.weights import exchanged_state

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFIDE_FEATURE_CACHE", "off")


def linear_exp(**overrides: object) -> config_mod.ExperimentConfig:
    base = {"model.name": "linear", "model.features": "pixels", "model.image_size": 8, "data.source": "digits"}
    return config_mod.load(None, {**base, **overrides})


@pytest.mark.parametrize(
    ("features", "size", "inputs"),
    [("pixels", 28, 28 * 28), ("scatter", 28, 81 * 7 * 7), ("scatter", 8, 81 * 2 * 2)],
)
def test_layer_width_follows_the_features(features: str, size: int, inputs: int) -> None:
    """pixels: one input per pixel; scatter: 81 maps (J=2, L=8) at ceil(size / 4) per side."""
    model = create_model(config_mod.ModelConfig(name="linear", features=features, image_size=size), 3)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        "classifier.weight": (3, inputs),
        "classifier.bias": (3,),
    }


def test_ngrams_width_is_the_hash_dim() -> None:
    model = create_model(config_mod.ModelConfig(name="linear", features="ngrams", hash_dim=100), 4)
    assert model.classifier.weight.shape == (4, 100)


def test_only_the_layer_is_exchanged_and_it_starts_at_zero() -> None:
    model = build_model(linear_exp(), 10)
    state = exchanged_state(model)
    assert sorted(state) == ["classifier.bias", "classifier.weight"]
    assert all(float(t.abs().sum()) == 0.0 for t in state.values())


def _digits(n: int = 60) -> RawData:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    x = np.zeros((n, 1, 8, 8), dtype=np.uint8)
    x[labels == 1, :, :, :4] = 255  # class 1: left half bright
    x[labels == 0, :, :, 4:] = 255  # class 0: right half bright
    return RawData(labels=labels.astype(np.int64), images=x)


def test_a_few_sgd_steps_learn_a_separable_task() -> None:
    """Two classes told apart by which half of the image is bright: the linear model's logits move
    to the right class (the batches' 'features' reach the layer)."""
    from common.train import evaluate, train

    exp = linear_exp(**{"train.optimizer": "sgd", "train.lr": 1.0, "train.local_epochs": 2, "train.batch_size": 16})
    model = build_model(exp, 2)
    data = make_dataset(_digits(), exp.model)
    before = evaluate(model, make_loader(data, 64, shuffle=False), 2)
    train(model, make_loader(data, 16, shuffle=True), exp.train)
    after = evaluate(model, make_loader(data, 64, shuffle=False), 2)
    assert before.loss == pytest.approx(np.log(2), abs=1e-6)  # zero weights: uniform predictions
    assert after.accuracy == 1.0 and after.loss < 0.1


def test_dp_sgd_trains_the_layer(tmp_path) -> None:
    """DP-SGD (Opacus, per-sample clipping) accepts the linear model and moves its weights."""
    from common.privacy.governance.dpsgd import train_private
    from common.privacy.governance.ledger import Ledger
    from common.privacy.governance.policy import SIMULATION

    exp = linear_exp(
        **{"privacy.mode": "local", "privacy.noise_multiplier": 1.0, "train.batch_size": 16, "train.optimizer": "sgd"}
    )
    model = build_model(exp, 2)
    data = make_dataset(_digits(), exp.model)
    result, privacy = train_private(
        model, data, exp.train, exp.privacy, rounds=1, ledger=Ledger.open(tmp_path / "l.json"),
        policy=SIMULATION, site="s", run="r", server_round=1,
    )  # fmt: skip
    assert result.steps >= 1 and privacy.epsilon > 0
    assert float(model.classifier.weight.abs().sum()) > 0


def test_export_round_trip(tmp_path) -> None:
    """An exported linear model (text features too) is a state_dict file that loads back."""
    exp = linear_exp(**{"model.features": "ngrams", "model.hash_dim": 32, "data.source": "synthetic_text"})
    model = build_model(exp, 3)
    with torch.no_grad():
        model.classifier.weight.fill_(0.5)
    save_model(model, exp, LabelSet(("a", "b", "c")), tmp_path)
    loaded = load_model(tmp_path)
    assert torch.equal(loaded.model.classifier.weight, model.classifier.weight)
    assert loaded.model_cfg.features == "ngrams" and loaded.model_cfg.hash_dim == 32


def test_label_name_init_is_a_zero_shot_classifier() -> None:
    """Rows from the label names' n-grams: a query sharing words with 'card_arrival' scores that
    class highest before any training, and a logit is 10 x the cosine (1 block: 10 for the label's
    own phrase)."""
    exp = config_mod.load(
        None,
        {"model.name": "linear", "model.features": "ngrams", "model.hash_dim": 4096, "model.head_init": "label_names",
         "data.source": "synthetic_text", "data.labels": ["card_arrival", "exchange_rate", "top_up_failed"]},
    )  # fmt: skip
    model = build_model(exp, 3)
    raw = RawData(labels=np.zeros(2, dtype=np.int64), texts=("my card has not arrived", "card arrival"))
    out = model(features=make_dataset(raw, exp.model).collate([(0, torch.tensor(0)), (1, torch.tensor(0))])["features"])
    assert out.logits.argmax(dim=1).tolist() == [0, 0]
    assert float(out.logits[1, 0]) == pytest.approx(10.0, abs=1e-4)


def test_label_name_init_keeps_its_logits_under_a_feature_scale() -> None:
    """model.feature_scale 4 multiplies the features by 4 and the label-name rows are divided by 4:
    the label's own phrase still scores 10 (10 x cosine 1), not 40."""
    exp = config_mod.load(
        None,
        {"model.name": "linear", "model.features": "ngrams", "model.hash_dim": 4096, "model.head_init": "label_names",
         "model.feature_scale": 4.0, "data.source": "synthetic_text", "data.labels": ["card_arrival", "top_up"]},
    )  # fmt: skip
    model = build_model(exp, 2)
    raw = RawData(labels=np.zeros(1, dtype=np.int64), texts=("card arrival",))
    features = make_dataset(raw, exp.model).collate([(0, torch.tensor(0))])["features"]
    assert float(features.norm()) == pytest.approx(4.0, abs=1e-5)
    assert float(model(features=features).logits[0, 0]) == pytest.approx(10.0, abs=1e-4)
