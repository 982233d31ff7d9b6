"""common/privacy/bookkeeping.py: the one-backward clipped gradient sum equals the textbook DP-SGD
quantity sum_i min(1, C/||g_i||) g_i computed one sample at a time, for the layer types of
Confide's models (BERT full and LoRA, DP-ready ResNet with GroupNorm), and parameters get no
stray unclipped gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common import config as config_mod
from common.privacy.bookkeeping import BookKeeping, supports
from common.models import build_model


def tiny_bert(lora: bool = False) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3,
        pad_token_id=0,
    )  # fmt: skip
    model = BertForSequenceClassification(cfg)
    if lora:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query", "value"]))
        for n, p in model.named_parameters():  # non-zero B so LoRA A gets a gradient too
            if "lora_B" in n:
                nn.init.normal_(p, std=0.1)
    return model


def bert_batch(n: int = 5) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 40, (n, 10), generator=g)
    ids[:, 7:] = 0  # padding, and repeated tokens within a sample
    ids[:, 1] = ids[:, 2]
    mask = (ids != 0).long()
    pos = torch.arange(10).expand(n, 10).contiguous()
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "position_ids": pos}
    return inputs, torch.randint(0, 3, (n,), generator=g)


def forward(model: nn.Module, inputs) -> torch.Tensor:
    return model(**inputs).logits if isinstance(inputs, dict) else model(inputs)


def reference(model: nn.Module, inputs, labels: torch.Tensor, c: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-sample gradients one sample at a time, clipped and summed."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    norms = []
    for i in range(len(labels)):
        one = {k: v[i : i + 1] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[i : i + 1]
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(forward(model, one), labels[i : i + 1]).backward()
        grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in params.items()}
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        norms.append(norm)
        for n in total:
            total[n] += grads[n] * min(1.0, c / (float(norm) + 1e-6))
    model.zero_grad(set_to_none=True)
    return total, torch.stack(norms)


def check(model: nn.Module, inputs, labels: torch.Tensor) -> None:
    model.train()
    _, norms = reference(model, inputs, labels, 1e9)
    c = float(norms.median())  # some samples clipped, some not
    expected, _ = reference(model, inputs, labels, c)
    engine = BookKeeping(model, c)
    losses = nn.functional.cross_entropy(forward(model, inputs), labels, reduction="none")
    engine.backward(losses)
    engine.remove()
    torch.testing.assert_close(engine.last_norms, norms.float(), rtol=1e-4, atol=1e-6)
    got = dict(model.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(got[name].grad, value, rtol=1e-4, atol=1e-6, msg=name)
    assert all(got[name].requires_grad for name in expected)  # frozen only during the step


def test_bert_full_fine_tuning() -> None:
    inputs, labels = bert_batch()
    check(tiny_bert(), inputs, labels)


def test_bert_lora() -> None:
    inputs, labels = bert_batch()
    model = tiny_bert(lora=True)
    check(model, inputs, labels)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)


def test_dp_ready_resnet() -> None:
    exp = config_mod.load(None, {"model.name": "resnet18", "privacy.mode": "local"})
    model = build_model(exp, 3)  # GroupNorm, out-of-place residuals
    g = torch.Generator().manual_seed(2)
    check(model, torch.randn(4, 1, 12, 12, generator=g), torch.tensor([0, 1, 2, 1]))


def test_both_conv_paths_with_bias_and_chunked_batch() -> None:
    """A large-map conv takes the early per-sample path, a small-map one keeps (a, g) for the
    weight-gradient kernel; both with biases and more samples than one unfold chunk."""
    from common.privacy import bookkeeping

    torch.manual_seed(3)
    early, late = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 32, 3, stride=2, padding=1)
    model = nn.Sequential(early, nn.GroupNorm(1, 3), nn.ReLU(), late, nn.Flatten(), nn.Linear(32 * 16, 3))
    x = torch.randn(bookkeeping._CHUNK + 3, 2, 8, 8)
    a_early, a_late = x, torch.randn(len(x), 3, 8, 8)
    assert bookkeeping._conv_instantiate(early, len(x), a_early.numel() + len(x) * 3 * 8 * 8)
    assert not bookkeeping._conv_instantiate(late, len(x), a_late.numel() + len(x) * 32 * 4 * 4)
    check(model, x, torch.arange(len(x)) % 3)


def test_unsupported_layers_are_named() -> None:

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    assert supports(model) == ["1 (BatchNorm2d)"]
    with pytest.raises(ValueError, match="BatchNorm2d"):
        BookKeeping(model, 1.0)
