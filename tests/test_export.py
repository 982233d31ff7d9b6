"""Export: saved models reload with plain libraries and give identical predictions."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.data import LabelSet, RawData
from common.export import load_model, save_model
from common.models import create_model
from common.train import logits

pytestmark = pytest.mark.unit


def outputs(model: torch.nn.Module, loader) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([logits(model, b) for b in loader])


def test_resnet_export_reloads_to_identical_predictions(tmp_path: Path) -> None:
    exp = config_mod.load(None, {"data.labels": "0,1,2"})
    labels = LabelSet(exp.data.labels)
    model = create_model(exp.model, 3, seed=5)
    save_model(model, exp, labels, tmp_path / "m")
    raw = RawData(labels=np.array([0, 1, 2]), images=np.random.default_rng(0).integers(0, 255, (3, 1, 8, 8), np.uint8))
    loader = make_loader(make_dataset(raw, exp.model), 3, shuffle=False)
    loaded = load_model(tmp_path / "m")
    assert loaded.labels == labels
    assert torch.equal(outputs(model, loader), outputs(loaded.model, loader))
    # the state_dict file is plain torch
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())


def test_bert_export_is_a_save_pretrained_folder(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    exp = config_mod.load(None, {"model.name": "bert", "data.source": "synthetic_text", "data.labels": "no,yes"})
    labels = LabelSet(exp.data.labels)
    model = create_model(exp.model, 2, seed=1)
    save_model(model, exp, labels, tmp_path / "b")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "b")
    assert plain.config.id2label == {0: "no", 1: "yes"}
    AutoTokenizer.from_pretrained(tmp_path / "b")
    raw = RawData(labels=np.array([0, 1]), texts=("is my card lost", "send money"))
    loader = make_loader(make_dataset(raw, exp.model), 2, shuffle=False)
    loaded = load_model(tmp_path / "b")
    assert torch.allclose(outputs(model, loader), outputs(loaded.model, loader), atol=0, rtol=0)


def test_mean_pooled_bert_export_reloads_to_identical_predictions(tmp_path: Path) -> None:
    """The export records model.pooling; reloading applies it again (no pooler weights are saved)."""
    overrides = {"model.name": "bert", "model.pooling": "mean", "data.source": "synthetic_text"}
    overrides["data.labels"] = "no,yes"
    exp = config_mod.load(None, overrides)
    model = create_model(exp.model, 2, seed=1)
    save_model(model, exp, LabelSet(exp.data.labels), tmp_path / "b")
    raw = RawData(labels=np.array([0, 1]), texts=("is my card lost", "send money to my landlord today"))
    loader = make_loader(make_dataset(raw, exp.model), 2, shuffle=False)
    loaded = load_model(tmp_path / "b")
    assert torch.allclose(outputs(model, loader), outputs(loaded.model, loader), atol=0, rtol=0)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Trained-looking weights: every float tensor moved off its init (norm layers included)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.dtype.is_floating_point:
                t.add_(0.1 * torch.randn(t.shape, generator=g))
    return model


def test_saved_dp_resnet_warm_starts_bit_identical(tmp_path: Path) -> None:
    """A DP-trained (GroupNorm) ResNet-18 export given back as model.weights to a new DP job is the
    same model, tensor for tensor: the norm layers' affine weights included (the warm start)."""
    from common.models import build_model

    exp = config_mod.load(None, {"privacy.mode": "local", "data.labels": "0,1,2"})
    labels = LabelSet(exp.data.labels)
    model = _perturbed(build_model(exp, 3))
    save_model(model, exp, labels, tmp_path / "m")
    again = build_model(config_mod.replace(exp, **{"model.weights": str(tmp_path / "m" / "model.pt")}), 3)
    want, got = model.state_dict(), again.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_bert_warm_starts_from_a_saved_confide_model_folder(tmp_path: Path) -> None:
    """model.checkpoint = a Confide export (mean pooling, same labels): the new job's model starts
    from the saved weights, head included."""
    from common.models import build_model

    keys = {"model.name": "bert", "data.source": "synthetic_text", "model.pooling": "mean", "data.labels": "a,b,c"}
    exp = config_mod.load(None, keys)
    labels = LabelSet(exp.data.labels)
    model = _perturbed(build_model(exp, 3))
    save_model(model, exp, labels, tmp_path / "m")
    again = build_model(config_mod.load(None, {**keys, "model.checkpoint": str(tmp_path / "m")}), 3)
    want, got = model.state_dict(), again.state_dict()
    assert want.keys() == got.keys()
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, different[:3]


LORA_FIELDS = {"lora_r", "lora_alpha", "lora_dropout", "lora_targets"}
BERT_FIELDS = {"checkpoint", "max_length", "pooling", "head_init", *LORA_FIELDS}
RESNET_FIELDS = {"in_channels", "small_input", "norm", "weights"}


def _exported_model_sections(folder: Path) -> list[dict]:
    meta = yaml.safe_load((folder / "confide.yaml").read_text())
    return [meta["model"], meta["experiment"]["model"]]


def test_resnet_export_records_no_bert_fields_and_reloads_without_its_weights_file(tmp_path: Path) -> None:
    """A ResNet's confide.yaml (its ``model`` and ``experiment.model``) names none of BERT's fields
    (max_length, pooling, lora_*, checkpoint, head_init) yet keeps its own; it reloads to the same
    outputs, with the absent fields at their defaults, even once the starting weights file
    (model.weights) is gone, since model.pt replaces every tensor."""
    start = tmp_path / "start.pt"
    torch.save(create_model(config_mod.load(None, {"data.labels": "0,1"}).model, 2, seed=3).state_dict(), start)
    keys = {"data.labels": "0,1", "model.weights": str(start), "model.weights_partial": True, "model.in_channels": 3}
    exp = config_mod.load(None, keys)
    model = create_model(exp.model, 2, seed=5)
    save_model(model, exp, LabelSet(exp.data.labels), tmp_path / "m")
    start.unlink()
    for section in _exported_model_sections(tmp_path / "m"):
        assert not BERT_FIELDS & set(section), section
        assert RESNET_FIELDS <= set(section) and section["in_channels"] == 3
    loaded = load_model(tmp_path / "m")
    assert loaded.model_cfg.in_channels == 3 and loaded.model_cfg.max_length == config_mod.ModelConfig().max_length
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))


def test_mean_pooled_bert_export_has_no_resnet_fields_and_loads_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A mean-pooled BERT's confide.yaml names none of the ResNet fields (in_channels, small_input,
    norm, weights) but keeps pooling; reloading it prints no transformers LOAD REPORT for the
    pooler it has no weights for on purpose, and Confide warns of nothing."""
    keys = {"model.name": "bert", "model.pooling": "mean", "data.source": "synthetic_text", "data.labels": "no,yes"}
    exp = config_mod.load(None, keys)
    save_model(create_model(exp.model, 2, seed=1), exp, LabelSet(exp.data.labels), tmp_path / "b")
    for section in _exported_model_sections(tmp_path / "b"):
        assert not RESNET_FIELDS & set(section), section
        assert section["pooling"] == "mean"
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        loaded = load_model(tmp_path / "b")
    assert loaded.model_cfg.pooling == "mean"
    out, err = capfd.readouterr()
    assert "LOAD REPORT" not in out + err and "MISSING" not in out + err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_tensor_missing_from_a_bert_export_is_still_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the expected gaps are silenced: a [CLS]-pooled export whose file lost the classifier's
    weight loads with a warning naming that tensor (and not the pooler, which is present)."""
    from safetensors.torch import load_file, save_file

    keys = {"model.name": "bert", "data.source": "synthetic_text", "data.labels": "no,yes"}
    exp = config_mod.load(None, keys)
    save_model(create_model(exp.model, 2, seed=1), exp, LabelSet(exp.data.labels), tmp_path / "b")
    weights = tmp_path / "b" / "model.safetensors"
    state = load_file(weights)
    del state["classifier.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING, logger="common.export"):
        load_model(tmp_path / "b")
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "common.export")
    assert "1 tensor(s) missing" in warned and "classifier.weight" in warned and "pooler" not in warned


def test_model_card_shows_roc_auc_when_the_metrics_have_it(tmp_path: Path) -> None:
    """The exported model's metrics table gains a ROC AUC column when a scope recorded one (a
    two-class task's central evaluation); a scope without it shows n/a there."""
    from common.export import write_model_card

    exp = config_mod.load(None, {"data.labels": "0,1"})
    final = {
        "federated": {"accuracy": 0.7, "macro_f1": 0.6, "loss": 0.5},
        "central": {"accuracy": 0.8, "macro_f1": 0.75, "roc_auc": 0.875, "loss": 0.4, "num_examples": 20},
    }
    write_model_card(tmp_path, exp, LabelSet(exp.data.labels), {}, final)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "| scope | accuracy | macro-F1 | ROC AUC | loss | records |" in card
    assert "| central | 0.8000 | 0.7500 | 0.8750 | 0.4000 | 20 |" in card
    assert "| federated | 0.7000 | 0.6000 | n/a | 0.5000 | withheld |" in card
