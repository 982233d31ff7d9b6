"""common/augment.py: each augmented image is a shift (and with crop_flip, possibly a mirror) of
its own record, checked against windows of numpy's reflect padding; K copies per record sit next
to each other with the record's label; training counts records, not copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common import config as config_mod
from common.augment import Augmenter
from common.batches import make_dataset, make_loader
from common.data import RawData
from common.errors import ConfigError
from common.train import train

pytestmark = pytest.mark.unit


def windows(image: np.ndarray, pad: int) -> dict[tuple[int, int], np.ndarray]:
    """Every (dy, dx) crop of the reflect-padded (C, H, W) image, by numpy."""
    _, h, w = image.shape
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    return {(dy, dx): padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)}


def which_window(out: np.ndarray, image: np.ndarray, pad: int, mirrored_too: bool) -> tuple[int, int, bool]:
    for (dy, dx), win in windows(image, pad).items():
        if np.array_equal(out, win):
            return dy, dx, False
        if mirrored_too and np.array_equal(out, win[:, :, ::-1]):
            return dy, dx, True
    raise AssertionError("augmented image is no shift (or mirrored shift) of its record")


def batch(n: int, side: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(n, 1, side, side, generator=g), "labels": torch.arange(n) % 3}


def test_crop_is_a_reflect_padded_shift_and_every_shift_occurs() -> None:
    b = batch(300)
    out = Augmenter("crop", 1, seed=1)(b)
    assert out["pixel_values"].shape == b["pixel_values"].shape
    assert torch.equal(out["labels"], b["labels"])
    pad = 16 // 8
    seen = {which_window(o.numpy(), x.numpy(), pad, False)[:2] for o, x in zip(out["pixel_values"], b["pixel_values"])}
    assert len(seen) == (2 * pad + 1) ** 2  # all 25 shifts drawn among 300 images (a fixed shift would fail)


def test_crop_flip_mirrors_about_half() -> None:
    b = batch(200)
    out = Augmenter("crop_flip", 1, seed=2)(b)
    flips = [which_window(o.numpy(), x.numpy(), 2, True)[2] for o, x in zip(out["pixel_values"], b["pixel_values"])]
    assert 60 < sum(flips) < 140


def test_multiplicity_puts_k_copies_of_each_record_side_by_side() -> None:
    b, k = batch(20), 4
    out = Augmenter("crop", k, seed=3)(b)
    assert out["pixel_values"].shape[0] == 20 * k
    assert out["labels"].tolist() == [int(y) for y in b["labels"] for _ in range(k)]
    for i, x in enumerate(b["pixel_values"]):
        copies = out["pixel_values"][i * k : (i + 1) * k]
        shifts = {which_window(c.numpy(), x.numpy(), 2, False)[:2] for c in copies}
        assert shifts  # each copy is a shift of record i (not of a neighbour)
    assert Augmenter("crop", k, seed=3)(batch(0))["pixel_values"].shape == (0, 1, 16, 16)


def test_training_counts_records_not_copies() -> None:
    rng = np.random.default_rng(0)
    raw = RawData(labels=rng.integers(0, 2, 24).astype(np.int64), images=rng.integers(0, 255, (24, 1, 8, 8), np.uint8))
    exp = config_mod.load(None, {"train.augment": "crop", "train.augment_multiplicity": 3, "train.batch_size": 8})
    ds = make_dataset(raw, exp.model)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    seen_rows = []
    result = train(model, make_loader(ds, 8, shuffle=False), exp.train, augment=Augmenter("crop", 3, seed=0),
                   step_hook=lambda b: seen_rows.append(int(b["labels"].shape[0])))  # fmt: skip
    assert result.num_examples == 24 and result.steps == 3
    assert seen_rows == [24, 24, 24]  # the model trained on 8 records x 3 copies per step


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"train.augment_multiplicity": 2}, "train.augment_multiplicity"),
        ({"train.augment_multiplicity": 0, "train.augment": "crop"}, "train.augment_multiplicity"),
        ({"train.ema_decay": 1.0}, "train.ema_decay"),
        ({"train.augment": "crop", "model.name": "bert", "data.source": "synthetic_text"}, "train.augment"),
        (
            {"train.augment": "crop", "train.augment_multiplicity": 2, "privacy.mode": "local",
             "privacy.grad_sample_mode": "ghost"},
            "privacy.grad_sample_mode",
        ),
    ],
)  # fmt: skip
def test_bad_augmentation_settings_are_refused_by_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_mod.load(None, overrides)
