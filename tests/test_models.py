"""Registry: server and sites build identical architectures; stems, channels, weights files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common import config as config_mod
from common.errors import ConfigError
from common.models import available, create_model

pytestmark = pytest.mark.unit


def model_cfg(**kw: object):
    return config_mod.load(None, {f"model.{k}": v for k, v in kw.items()}).model


def same_keys_and_shapes(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)


def test_registry_lists_all_families() -> None:
    assert available() == ["bert", "linear", "resnet18", "resnet20", "resnet34", "resnet50", "resnet8"]


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


def test_weights_for_another_architecture_are_refused_unless_partial(tmp_path: Path) -> None:
    """A ResNet-18 file given to a ResNet-8 matches a handful of tensors: loading only those would
    train the rest from random init under a 'pretrained' label, so it is refused naming the key,
    the count and the first tensor it cannot set; model.weights_partial: true loads the matches."""
    donor = create_model(model_cfg(name="resnet18"), 2, seed=123)
    path = tmp_path / "r18.pt"
    torch.save(donor.state_dict(), path)
    refused = r"'model.weights': .*r18.pt sets \d+ of the model's \d+ tensors.*weights_partial"
    with pytest.raises(ConfigError, match=refused):
        create_model(model_cfg(name="resnet8", weights=str(path)), 2, seed=0)
    donor8 = create_model(model_cfg(name="resnet8"), 2, seed=123)
    state = {k: v for k, v in donor8.state_dict().items() if not k.startswith("layer")}  # stem only
    torch.save(state, tmp_path / "stem.pt")
    with pytest.raises(ConfigError, match="weights_partial"):
        create_model(model_cfg(name="resnet8", weights=str(tmp_path / "stem.pt")), 2, seed=0)
    got = create_model(model_cfg(name="resnet8", weights=str(tmp_path / "stem.pt"), weights_partial=True), 2, seed=0)
    assert torch.equal(got.conv1.weight, donor8.conv1.weight)


def test_bad_weights_or_checkpoint_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.weights.*not found"):
        create_model(model_cfg(name="resnet18", weights=str(tmp_path / "none.pt")), 2)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="model.weights.*cannot read") as err:
        create_model(model_cfg(name="resnet18", weights=str(tmp_path / "junk.pt")), 2)
    assert "weights_only=False" not in str(err.value)  # torch's advice would run code from the file
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="model.weights.*holds a list, not a state_dict"):
        create_model(model_cfg(name="resnet18", weights=str(tmp_path / "list.pt")), 2)
    cfg = config_mod.load(
        None,
        {"model.name": "bert", "data.source": "synthetic_text", "model.checkpoint": str(tmp_path / "no-such-model")},
    ).model
    with pytest.raises(ConfigError, match="model.checkpoint"):
        create_model(cfg, 2)


def test_fewer_than_two_labels_rejected() -> None:
    with pytest.raises(ConfigError, match="at least 2 labels"):
        create_model(model_cfg(name="resnet18"), 1)


def tiny_bert(num_labels: int = 3) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16, num_labels=num_labels, pad_token_id=0,
    )  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def test_mean_pooling_reads_the_masked_mean_of_the_last_hidden_states() -> None:
    """model.pooling=mean: the head sees the attention-masked token mean (padding changes nothing),
    the [CLS] pooler's weights are gone, and a deep copy pools with its own mask."""
    import copy

    from common.models import use_pooling

    model = use_pooling(tiny_bert(), "mean")
    assert not any(k.startswith("bert.pooler") for k in model.state_dict())
    ids = torch.tensor([[2, 5, 7, 9, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        want = model.classifier(hidden[:, :4].mean(1))
        unpadded = model(input_ids=ids[:, :4], attention_mask=mask[:, :4]).logits
        twin = copy.deepcopy(model)(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, unpadded)
    torch.testing.assert_close(twin, got)
    cls = tiny_bert()
    with torch.no_grad():
        assert not torch.allclose(cls(input_ids=ids, attention_mask=mask).logits, got)


def test_mean_pooling_is_refused_where_it_cannot_apply() -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from common.models import use_pooling

    with pytest.raises(ConfigError, match="model.pooling"):
        model_cfg(name="resnet18", pooling="mean")
    tiny = DistilBertConfig(vocab_size=30, dim=8, n_layers=1, n_heads=2, hidden_dim=16)
    distil = DistilBertForSequenceClassification(tiny)
    with pytest.raises(ConfigError, match="model.pooling.*distilbert"):
        use_pooling(distil, "mean")


def test_group_norm_warm_start_keeps_the_norm_layers_affine_weights(tmp_path: Path) -> None:
    """model.weights with the GroupNorm variant (model.norm=group, or local DP): the file's
    BatchNorm affine weights land in the GroupNorm layers (they were silently reset to 1 and 0)."""
    from common.models import build_model

    source = create_model(model_cfg(name="resnet18"), 2, seed=1)
    with torch.no_grad():
        source.bn1.weight.fill_(2.5)
        source.layer1[0].bn2.bias.fill_(-0.75)
    path = tmp_path / "bn.pt"
    torch.save(source.state_dict(), path)
    for keys in ({"model.norm": "group"}, {"privacy.mode": "local"}):
        exp = config_mod.load(None, {"model.weights": str(path), **keys})
        model = build_model(exp, 2)
        assert isinstance(model.bn1, torch.nn.GroupNorm)
        assert torch.all(model.bn1.weight == 2.5) and torch.all(model.layer1[0].bn2.bias == -0.75)
        assert torch.equal(model.conv1.weight, source.conv1.weight)


@pytest.mark.parametrize("name", ["resnet8", "resnet20"])
def test_small_resnets_are_registered_and_server_and_site_match(name: str) -> None:
    """The CIFAR-style ResNets (common/resnet_small.py) are in the registry beside torchvision's;
    server and site build identical weights and accept grayscale 28 px inputs."""
    assert name in available()
    cfg = model_cfg(name=name, in_channels=1)
    server, site = create_model(cfg, 7, seed=0), create_model(cfg, 7, seed=0)
    assert same_keys_and_shapes(server, site)
    assert all(torch.equal(server.state_dict()[k], site.state_dict()[k]) for k in server.state_dict())
    assert server(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_check_model_source_names_the_key_and_the_resolved_path_without_loading(tmp_path: Path) -> None:
    """A missing relative checkpoint was found only when the ServerApp built the model (65 s
    later); ``check_model_source`` refuses it, and bad weights files, before the simulation starts."""
    from common.models import check_model_source

    def exp(**kw: object) -> config_mod.ExperimentConfig:
        return config_mod.load(None, kw)

    bert = {"model.name": "bert", "data.source": "synthetic_text"}
    check_model_source(exp(**bert))  # the bundled MiniLM
    check_model_source(exp())  # a ResNet without weights
    with pytest.raises(ConfigError, match=rf"'model.checkpoint': checkpoint folder not found: {tmp_path}/models/b"):
        check_model_source(exp(**bert, **{"model.checkpoint": "../" + tmp_path.name + "/models/b"}))
    (tmp_path / "models").mkdir()  # 'models/b' reads as a hub name, but a 'models' folder is here
    with pytest.raises(ConfigError, match=rf"checkpoint folder not found: {tmp_path}/models/b"):
        check_model_source(exp(**bert, **{"model.checkpoint": "models/b"}))
    (tmp_path / "models" / "b").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        check_model_source(exp(**bert, **{"model.checkpoint": "models/b"}))
    (tmp_path / "models" / "b" / "config.json").write_text("{}")
    check_model_source(exp(**bert, **{"model.checkpoint": "models/b"}))
    torch.save([1], tmp_path / "w.pt")
    with pytest.raises(ConfigError, match=rf"'model.weights': {tmp_path}/w.pt holds a list"):
        check_model_source(exp(**{"model.weights": "w.pt"}))
    torch.save(create_model(model_cfg(name="resnet8"), 2).state_dict(), tmp_path / "w.pt")
    check_model_source(exp(**{"model.name": "resnet8", "model.weights": "w.pt"}))
    with pytest.raises(ConfigError, match="'data.labels' has one label"):
        check_model_source(exp(**{"data.labels": "a"}))
