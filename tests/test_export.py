"""Export: saved models reload with plain libraries and give identical predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.data import LabelSet, RawData
from common.export import load_model, save_model
from common.models import create_model
from common.train import logits


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
    same model, tensor for tensor: the norm layers' affine weights included (issue 11's warm start)."""
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
