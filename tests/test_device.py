"""common/device.py: train.device resolves to CUDA only where it exists (a cuda request on a machine
without one is refused naming the key), batches follow the model, mixed precision trains in
non-private runs (bf16 and fp16 with loss scaling) and is refused under DP-SGD."""

from __future__ import annotations

import pytest
import torch

from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.device import autocast_dtype, on_model_device, resolve
from common.errors import ConfigError
from common.models import create_model
from common.train import evaluate, train
from tests.test_train import tiny_images


@pytest.mark.unit
def test_auto_is_cpu_without_cuda_and_cuda_is_refused_there() -> None:
    cfg = config_mod.load(None).train
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve(cfg).type == expected
    assert resolve(config_mod.load(None, {"train.device": "cpu"}).train).type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="config key 'train.device' is 'cuda' but this machine has no CUDA"):
            resolve(config_mod.load(None, {"train.device": "cuda"}).train)


@pytest.mark.unit
def test_batches_follow_the_model() -> None:
    model = torch.nn.Linear(2, 2).to(torch.float32)
    batch = on_model_device({"pixel_values": torch.zeros(1, 2), "labels": torch.zeros(1, dtype=torch.long)}, model)
    assert all(v.device == model.weight.device for v in batch.values())


@pytest.mark.sim
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_learns(precision: str) -> None:
    """Autocast in the local loop: the loss falls and the model fits separable images; weights stay fp32.
    ResNet-8: any convolutional model shows it, and half precision on a CPU is slow."""
    exp = config_mod.load(
        None,
        {
            "model.name": "resnet8",
            "train.lr": 0.001,
            "train.local_epochs": 6,
            "train.precision": precision,
            "train.device": "cpu",
        },
    )
    assert autocast_dtype(exp.train) == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    torch.manual_seed(0)
    model = create_model(exp.model, 2)
    ds = make_dataset(tiny_images(), exp.model)
    before = evaluate(model, make_loader(ds, 64, shuffle=False), 2)
    train(model, make_loader(ds, 16, shuffle=True), exp.train)
    after = evaluate(model, make_loader(ds, 64, shuffle=False), 2)
    assert after.loss < before.loss and after.accuracy >= 0.9
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.unit
def test_mixed_precision_is_refused_under_dp() -> None:
    with pytest.raises(ConfigError, match="config key 'train.precision' 'bf16' is for non-private training"):
        config_mod.load(None, {"train.precision": "bf16", "privacy.mode": "local"})
