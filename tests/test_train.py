"""Training loop learns on tiny data; evaluation reports accuracy/F1/loss (and ROC AUC for two
classes) correctly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.data import RawData
from common.metrics import classification_scores, summarize_sites
from common.models import create_model
from common.train import evaluate, train

pytestmark = pytest.mark.unit


def tiny_images() -> RawData:
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(2), 32).astype(np.int64)
    images = np.where(labels[:, None, None, None] == 1, 200, 30).astype(np.uint8)
    images = np.clip(images + rng.integers(0, 40, (64, 1, 8, 8)), 0, 255).astype(np.uint8)
    return RawData(labels=labels, images=images)


def test_training_lowers_loss_and_fits_separable_images() -> None:
    """ResNet-8: the loop, not the model, is under test here."""
    overrides = {"model.name": "resnet8", "train.lr": 0.001, "train.local_epochs": 8, "train.batch_size": 16}
    exp = config_mod.load(None, overrides)
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


class MeanBrightness(nn.Module):
    """A stand-in classifier: logits (0, mean pixel), so the second class's probability rises with
    an image's brightness (and ranks images as their pixel values do)."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.classes = classes
        self.unused = nn.Parameter(torch.zeros(1))  # a device to put batches on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([torch.zeros_like(s), s, torch.zeros(len(s), self.classes - 2)], dim=1)


def flat_images(levels: list[int], labels: list[int]) -> RawData:
    images = np.array(levels, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 8, 8), np.uint8)
    return RawData(labels=np.array(labels, dtype=np.int64), images=images)


def test_evaluate_reports_roc_auc_for_two_classes() -> None:
    """Images of brightness 10, 40 (class 0) and 35, 80 (class 1), scored by brightness: 3 of the
    4 (positive, negative) pairs rank right (35 < 40 does not), so roc_auc = 0.75; accuracy and
    F1 are unchanged by it, and as_dict (metrics.jsonl's ``central``) carries it."""
    exp = config_mod.load(None)
    loader = make_loader(make_dataset(flat_images([10, 40, 35, 80], [0, 0, 1, 1]), exp.model), 2, shuffle=False)
    result = evaluate(MeanBrightness(), loader, 2)
    assert result.roc_auc == 0.75 and result.as_dict()["roc_auc"] == 0.75
    assert result.num_examples == 4


def test_evaluate_leaves_roc_auc_out_for_one_class_or_more_labels() -> None:
    """One class in the evaluated records, or three labels: no roc_auc key at all (never NaN)."""
    exp = config_mod.load(None)
    one_class = make_loader(make_dataset(flat_images([10, 40], [1, 1]), exp.model), 2, shuffle=False)
    assert evaluate(MeanBrightness(), one_class, 2).roc_auc is None
    assert "roc_auc" not in evaluate(MeanBrightness(), one_class, 2).as_dict()
    three = make_loader(make_dataset(flat_images([10, 40, 90], [0, 1, 2]), exp.model), 3, shuffle=False)
    assert "roc_auc" not in evaluate(MeanBrightness(3), three, 3).as_dict()


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


# --------------------------------------------------------------------------- FedProx's proximal term


def _linear_task(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, 3, generator=g))
        model.bias.zero_()
    return model, torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)


def test_proximal_term_equals_the_explicit_fedprox_objective() -> None:
    """Three SGD steps with the hook (make_optimizer(..., proximal_mu)) land exactly where three steps
    on loss + (mu/2)||w - w0||^2, differentiated by autograd, land: the hook is FedProx's gradient."""
    from common.train import make_optimizer

    mu, lr = 0.7, 0.3
    cfg = config_mod.load(None, {"train.optimizer": "sgd", "train.momentum": 0.0, "train.lr": lr}).train
    hooked, x, y = _linear_task()
    explicit, _, _ = _linear_task()
    anchor = [p.detach().clone() for p in explicit.parameters()]
    opt_h = make_optimizer(hooked, cfg, proximal_mu=mu)
    opt_e = torch.optim.SGD(explicit.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(3):
        opt_h.zero_grad()
        loss_fn(hooked(x), y).backward()
        opt_h.step()
        opt_e.zero_grad()
        prox = sum(((p - a) ** 2).sum() for p, a in zip(explicit.parameters(), anchor, strict=True))
        (loss_fn(explicit(x), y) + mu / 2 * prox).backward()
        opt_e.step()
    for a, b in zip(hooked.parameters(), explicit.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    plain, _, _ = _linear_task()
    opt_p = make_optimizer(plain, cfg)
    for _ in range(3):
        opt_p.zero_grad()
        loss_fn(plain(x), y).backward()
        opt_p.step()
    assert not torch.allclose(plain.weight, hooked.weight, atol=1e-4)  # the term did something


def test_proximal_term_is_added_after_dp_noise_and_is_never_clipped() -> None:
    """Under Opacus's DPOptimizer (clip norm 1e-3, no noise) a model moved away from its anchor by d
    takes the DP step plus exactly lr*mu*d: the proximal gradient is not clipped with the records'."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from common.train import add_proximal_term

    mu, lr, d = 2.0, 0.1, 0.5
    runs = []
    for with_prox in (False, True):
        model, x, y = _linear_task()
        gsm = GradSampleModule(model)
        base = torch.optim.SGD(gsm.parameters(), lr=lr)
        if with_prox:
            add_proximal_term(base, gsm, mu)  # anchored at the current weights ...
        with torch.no_grad():
            for p in gsm.parameters():
                p.add_(d)  # ... then moved by d, as local steps would
        opt = DPOptimizer(base, noise_multiplier=0.0, max_grad_norm=1e-3, expected_batch_size=8)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(gsm(x), y).backward()
        opt.step()
        runs.append([p.detach().clone() for p in gsm.parameters()])
    for without, with_ in zip(*runs, strict=True):
        assert torch.allclose(without - with_, torch.full_like(without, lr * mu * d), atol=1e-6)


def test_head_only_trains_the_head_and_restores_the_rest() -> None:
    """LP-FT's first phase: inside head_only only the head (fc) moves; afterwards every parameter is
    trainable again, so the exchanged tensors are unchanged."""
    from common.train import head_only
    from common.weights import exchanged_state

    exp = config_mod.load(None, {"train.lr": 0.01, "train.max_steps": 2})
    model = create_model(exp.model, 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    keys = set(exchanged_state(model))
    ds = make_dataset(tiny_images(), exp.model)
    with head_only(model):
        train(model, make_loader(ds, 16, shuffle=True), exp.train)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"fc.weight", "fc.bias"}
    assert all(p.requires_grad for p in model.parameters()) and set(exchanged_state(model)) == keys


def test_ema_decay_ends_the_round_at_the_moving_average_of_the_iterates() -> None:
    """train.ema_decay (De et al. 2022): plain SGD steps replayed by hand on a copy, the average
    ema = d_t ema + (1 - d_t) w after step t with d_t = min(decay, (1 + t) / (10 + t)), from the
    round's starting weights. The model must end at that average, which differs from the last
    iterate (so a loop that ignored the setting fails)."""
    model, x, y = _linear_task()
    hand = copy.deepcopy(model)
    exp = config_mod.load(None, {"train.optimizer": "sgd", "train.momentum": 0.0, "train.lr": 0.3,
                                 "train.batch_size": 4, "train.local_epochs": 3, "train.ema_decay": 0.5})  # fmt: skip
    data = [(x[i], y[i]) for i in range(len(y))]

    def collate(b: list) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([r[0] for r in b]), "labels": torch.stack([r[1] for r in b])}

    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=False, collate_fn=collate)
    train(model, loader, exp.train)
    params = list(hand.parameters())
    ema = [p.detach().clone() for p in params]
    t = 0
    for _ in range(3):
        for start in range(0, len(y), 4):
            hand.zero_grad()
            torch.nn.functional.cross_entropy(hand(x[start : start + 4]), y[start : start + 4]).backward()
            with torch.no_grad():
                for p in params:
                    p -= 0.3 * p.grad
            d = min(0.5, (1 + t) / (10 + t))
            ema = [d * e + (1 - d) * p.detach() for e, p in zip(ema, params)]
            t += 1
    assert t == 6
    for got, want in zip(model.parameters(), ema):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    assert any((w - p).abs().max() > 1e-3 for w, p in zip(ema, params))
