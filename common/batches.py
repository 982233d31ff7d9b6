"""Raw records -> torch batches, by modality.

Images: uint8 (N, C, H, W) -> float tensors scaled to [-1, 1], channels matched to the
model (gray <-> RGB). Text: tokenized once, padded per batch (dynamic padding).
Every batch is a dict with ``labels`` plus ``pixel_values``, the tokenizer's fields, or ``features``
(``model.name: linear``: fixed features, ``common.features``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from common.checkpoints import checkpoint_path, load_tokenizer
from common.config import ModelConfig
from common.data import RawData

Batch = dict[str, torch.Tensor]


class ImageSet(Dataset):
    def __init__(self, raw: RawData, in_channels: int) -> None:
        assert raw.images is not None
        x = torch.from_numpy(raw.images).float().div_(127.5).sub_(1.0)
        if x.shape[1] != in_channels:
            x = x.mean(dim=1, keepdim=True) if in_channels == 1 else x.expand(-1, 3, -1, -1)
        self.x = x.contiguous()
        self.y = torch.from_numpy(raw.labels)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _collate_images(items: list[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
    xs, ys = zip(*items)
    return {"pixel_values": torch.stack(xs), "labels": torch.stack(ys)}


class TextSet(Dataset):
    def __init__(self, raw: RawData, cfg: ModelConfig) -> None:
        assert raw.texts is not None
        tokenizer = load_tokenizer(checkpoint_path(cfg))
        enc = tokenizer(list(raw.texts), truncation=True, max_length=cfg.max_length)
        self.ids: list[list[int]] = enc["input_ids"]
        self.y = torch.from_numpy(raw.labels)
        self.pad_id = int(tokenizer.pad_token_id or 0)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[list[int], torch.Tensor]:
        return self.ids[i], self.y[i]

    def collate(self, items: list[tuple[list[int], torch.Tensor]]) -> Batch:
        ids, ys = zip(*items)
        width = max(len(s) for s in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "token_type_ids": torch.zeros_like(input_ids),
            # Full-batch, contiguous position ids: with the model's broadcast default buffer,
            # Opacus's per-sample gradients fail ("stack expects each tensor to be equal size").
            "position_ids": torch.arange(width).expand(len(ids), width).contiguous(),
            "labels": torch.stack(ys),
        }


def make_dataset(raw: RawData, cfg: ModelConfig) -> Dataset:
    if cfg.name == "linear":  # fixed features, computed once here (common/features/)
        from common.features import FeatureSet

        return FeatureSet(raw, cfg)
    return TextSet(raw, cfg) if cfg.is_text else ImageSet(raw, cfg.in_channels)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    generator: torch.Generator | None = None,
    drop_single: bool = False,
) -> DataLoader:
    """Batches of ``dataset``. ``drop_single``: leave out a last batch of exactly one record
    (BatchNorm cannot normalise a batch of one in training mode; shuffled, so a different
    record is left out each epoch)."""
    collate: Any = getattr(dataset, "collate", _collate_images)  # TextSet, FeatureSet: their own
    if shuffle and generator is None:
        generator = torch.Generator().manual_seed(seed)
    drop_last = drop_single and len(dataset) % batch_size == 1 and len(dataset) > 1  # type: ignore[arg-type]
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator, drop_last=drop_last
    )
