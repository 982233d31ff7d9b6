"""What the scorer checks before it predicts anything: that the data fits the exported model.

A model trained on 8x8 one-channel 8-bit images still produces numbers for 28x28 RGB or 12-bit
ones (its convolutions and pooling take any size), so a mismatch must be refused here, naming the
data file and what differs, or the predictions are silently meaningless. Pixel ranges are checked
by the reader (``data.pixel_max``); labels the model has never seen are refused, counted, not dropped.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from common.data import LabelSet, Unlabelled
from common.errors import DataError
from common.export import ExportInfo

# The built-in image sources' native side (their images are not resized unless data.image_size is set).
NATIVE_SIDE = {"digits": 8, "synthetic_images": 8}
SHOWN = 5  # labels named in a refusal; the rest are counted


def expected_side(saved: ExportInfo) -> int | None:
    """The side of the square images the model was trained on, where the export tells it."""
    data = saved.experiment.get("data") or {}
    size = data.get("image_size") or 0
    if isinstance(size, int) and size > 0:
        return size
    return NATIVE_SIDE.get(str(data.get("source", "")))


def expected_channels(saved: ExportInfo) -> int | None:
    """1 or 3 for the ResNets (``model.in_channels``); None for models that take no image tensor."""
    return saved.model_cfg.in_channels if saved.model_cfg.name.startswith("resnet") else None


def check_images(records: Unlabelled, saved: ExportInfo, path: Path) -> None:
    """Channels and size of the images read, against what the model was trained on."""
    if records.images is None:
        return
    _, channels, height, width = records.images.shape
    want_channels = expected_channels(saved)
    if want_channels is not None and channels != want_channels:
        have, want = (
            ("RGB" if channels == 3 else "1-channel"),
            ("RGB" if want_channels == 3 else "1-channel (grayscale)"),
        )
        raise DataError(f"{path}: {have} images ({channels} channels), but the model takes {want} images "
                        f"(model.in_channels={want_channels})")  # fmt: skip
    side = expected_side(saved)
    if side is not None and (height, width) != (side, side):
        raise DataError(f"{path}: images are {height}x{width}, but the model was trained on {side}x{side} images; "
                        "pass --resize to scale them to that size")  # fmt: skip


def check_labels(records: Unlabelled, labels: LabelSet, path: Path, where: str) -> None:
    """Every record's label must be one the model knows; the others are counted and named."""
    known = set(labels.names)
    outside = Counter(v for v in records.raw_labels if v not in known)
    if not outside:
        return
    total = sum(outside.values())
    named = ", ".join(f"'{v}' ({n})" for v, n in outside.most_common(SHOWN))
    more = f" and {len(outside) - SHOWN} more labels" if len(outside) > SHOWN else ""
    shown = ", ".join(labels.names[:10]) + (", ..." if len(labels) > 10 else "")
    raise DataError(
        f"{path}: {total} of {len(records.raw_labels)} records have labels outside the model's label set "
        f"[{shown}] ({where}): {named}{more}"
    )
