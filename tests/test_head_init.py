"""common/head_init.py: the head starts as a zero-shot classifier over the label names' embeddings.

Checked against what the encoder itself computes: each label's own phrase is classified as that
label (rows in label order, bias zero), a plain query lands on the label whose name describes it,
and the logits are TEMPERATURE x cosine similarity of the head's input features."""

from __future__ import annotations

import pytest
import torch

from common import config as config_mod
from common.errors import ConfigError
from common.head_init import TEMPERATURE, head_of, init_from_label_names, phrase
from common.models import checkpoint_path, create_model, load_tokenizer

pytestmark = pytest.mark.unit

LABELS = ("card_arrival", "exchange_rate", "lost_or_stolen_phone", "top_up_failed")


def minilm():
    cfg = config_mod.load(None, {"model.name": "bert", "data.source": "synthetic_text", "model.pooling": "mean"}).model
    return cfg, create_model(cfg, len(LABELS)), load_tokenizer(checkpoint_path(cfg))


def test_phrases() -> None:
    assert phrase("card_arrival") == "card arrival"
    assert phrase("getSpareCard") == "get spare card"
    assert phrase("Credit reporting") == "credit reporting"


def test_label_names_make_a_zero_shot_classifier() -> None:
    cfg, model, tok = minilm()
    init_from_label_names(model, tok, LABELS, cfg.max_length)
    head = head_of(model)
    assert torch.all(head.bias == 0)
    model.eval()
    with torch.no_grad():
        own = model(**tok([phrase(lbl) for lbl in LABELS], padding=True, return_tensors="pt")).logits
        query = model(**tok(["My new card still has not arrived", "what is the euro to dollar rate"],
                            padding=True, return_tensors="pt")).logits  # fmt: skip
    assert own.argmax(-1).tolist() == [0, 1, 2, 3]
    assert query.argmax(-1).tolist() == [0, 1]
    # logits are TEMPERATURE * <x, e_j/|e_j|> / mean|e|: rows share one norm
    scale = torch.stack([head.weight[j].norm() for j in range(len(LABELS))])
    assert torch.allclose(scale, scale[0].expand_as(scale), rtol=1e-5)  # every row has the same norm
    assert float(own.max()) < 3 * TEMPERATURE  # cosine-scaled, not raw dot products


def test_refused_where_no_linear_head() -> None:
    with pytest.raises(ConfigError, match="model.head_init"):
        head_of(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_build_model_applies_it_before_lora() -> None:
    """model.head_init=label_names through build_model, with LoRA on: the trained head (peft's copy)
    holds the label-name rows, so what the server sends in round 1 is the zero-shot classifier."""
    from common.models import build_model

    exp = config_mod.load(None, {"model.name": "bert", "data.source": "synthetic_text", "model.pooling": "mean",
                                 "model.head_init": "label_names", "model.lora_r": 4,
                                 "data.labels": list(LABELS)})  # fmt: skip
    model = build_model(exp, len(LABELS))
    cfg, ref, tok = minilm()
    init_from_label_names(ref, tok, LABELS, cfg.max_length)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad and "classifier" in n and "weight" in n}
    (weight,) = trained.values()
    assert torch.allclose(weight, ref.classifier.weight, atol=1e-6)
