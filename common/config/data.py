"""The ``data`` section: where the records come from and how they are split into sites."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config.require import _require

DataSource = Literal[
    "digits", "synthetic_text", "synthetic_images", "csv", "json", "jsonl", "parquet", "imagefolder", "npz"
]
TEXT_SOURCES = ("synthetic_text", "csv", "json", "jsonl", "parquet")
IMAGE_SOURCES = ("digits", "synthetic_images", "imagefolder", "npz")
BUILTIN_SOURCES = ("digits", "synthetic_text", "synthetic_images")


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from, how labels are read, and how it is split into sites."""

    source: DataSource = "digits"
    # Training file or folder (text: csv/json/jsonl/parquet; images: folder or .npz).
    path: str = ""
    # Optional server-side test set. For npz the file's test_* arrays are used when empty.
    test_path: str = ""
    text_field: str = "text"
    label_field: str = "label"
    # The label set every site uses. Empty: derived once from the training data and
    # recorded in the run's resolved config. Sites with their own files need it set.
    labels: tuple[str, ...] = ()
    # Resize images to this square size (0 keeps the native size).
    image_size: int = 0
    # The pixel value of white in the image files. 0: 8-bit images (uint8, or integers in 0..255);
    # anything else is refused rather than guessed. Set it for other ranges: 1 for floats in [0, 1],
    # 4095 for 12-bit, 65535 for 16-bit; values are scaled to 8 bits (0..pixel_max -> 0..255).
    pixel_max: float = 0.0
    num_sites: int = 3
    partitioner: Literal["iid", "dirichlet"] = "iid"
    alpha: float = 0.5
    min_partition_size: int = 10
    # Fraction of each site's data held out for federated evaluation.
    val_fraction: float = 0.2
    # Use only the first N training records (0: all). For quick runs and tests.
    max_samples: int = 0
    central_eval: bool = True
    # Set by the coordinator when it derived data.labels from the pooled training records (a
    # simulation convenience): the label set is then a release about the records that no epsilon
    # covers, and privacy.json says so. Declared labels (the job's, public) leave it False.
    labels_from_records: bool = False

    def __post_init__(self) -> None:
        _require(self.num_sites >= 1, "data.num_sites", "must be >= 1")
        _require(self.alpha > 0, "data.alpha", "must be > 0")
        _require(0.0 < self.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1)")
        _require(self.max_samples >= 0, "data.max_samples", "must be >= 0")
        _require(self.image_size >= 0, "data.image_size", "must be >= 0")
        _require(self.pixel_max >= 0, "data.pixel_max", "must be >= 0 (0: 8-bit images)")
        _require(self.min_partition_size >= 0, "data.min_partition_size", "must be >= 0")
        if self.source not in BUILTIN_SOURCES:
            _require(bool(self.path), "data.path", f"is required for source '{self.source}'")
        _require(len(set(self.labels)) == len(self.labels), "data.labels", "has duplicates")

    @property
    def is_text(self) -> bool:
        return self.source in TEXT_SOURCES
