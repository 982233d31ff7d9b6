"""Registry: server and sites build identical architectures; stems, channels, weights files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common import config as config_mod
from common.errors import ConfigError
from common.models import available, create_model


def model_cfg(**kw: object):
    return config_mod.load(None, {f"model.{k}": v for k, v in kw.items()}).model


def same_keys_and_shapes(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)


def test_registry_lists_all_families() -> None:
    assert available() == ["bert", "resnet18", "resnet34", "resnet50"]


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_resnet_server_and_site_match_and_accept_grayscale(name: str) -> None:
    cfg = model_cfg(name=name, in_channels=1, small_input=True)
    server, site = create_model(cfg, 7, seed=0), create_model(cfg, 7, seed=0)
    assert same_keys_and_shapes(server, site)
    assert all(torch.equal(server.state_dict()[k], site.state_dict()[k]) for k in server.state_dict())
    assert server(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_small_input_stem_keeps_resolution_and_large_stem_accepts_rgb() -> None:
    small = create_model(model_cfg(name="resnet18", small_input=True), 2)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    large = create_model(model_cfg(name="resnet18", small_input=False, in_channels=3), 2)
    assert large.conv1.stride == (2, 2) and large(torch.zeros(1, 3, 64, 64)).shape == (1, 2)


def test_bert_minilm_offline_server_and_site_match() -> None:
    cfg = config_mod.load(None, {"model.name": "bert", "data.source": "synthetic_text"}).model
    server, site = create_model(cfg, 5, seed=0), create_model(cfg, 5, seed=0)
    assert same_keys_and_shapes(server, site)
    assert torch.equal(server.classifier.weight, site.classifier.weight)  # seeded head
    assert server.config.num_hidden_layers == 6 and server.classifier.out_features == 5
    n_params = sum(p.numel() for p in server.parameters())
    assert 22_000_000 < n_params < 23_500_000  # all-MiniLM-L6-v2 + head


def test_pretrained_weights_file_is_loaded_and_mismatches_skipped(tmp_path: Path) -> None:
    donor = create_model(model_cfg(name="resnet18"), 10, seed=123)
    path = tmp_path / "w.pt"
    torch.save(donor.state_dict(), path)
    got = create_model(model_cfg(name="resnet18", weights=str(path)), 3, seed=0)
    assert torch.equal(got.layer1[0].conv1.weight, donor.layer1[0].conv1.weight)
    assert got.fc.out_features == 3  # head of another size is kept fresh


def test_bad_weights_or_checkpoint_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.weights.*not found"):
        create_model(model_cfg(name="resnet18", weights=str(tmp_path / "none.pt")), 2)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="model.weights.*cannot read"):
        create_model(model_cfg(name="resnet18", weights=str(tmp_path / "junk.pt")), 2)
    cfg = config_mod.load(
        None,
        {"model.name": "bert", "data.source": "synthetic_text", "model.checkpoint": str(tmp_path / "no-such-model")},
    ).model
    with pytest.raises(ConfigError, match="model.checkpoint"):
        create_model(cfg, 2)


def test_fewer_than_two_labels_rejected() -> None:
    with pytest.raises(ConfigError, match="at least 2 labels"):
        create_model(model_cfg(name="resnet18"), 1)
