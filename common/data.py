"""Data sources: files a site owns (or built-in offline sets) -> labelled raw records.

Text comes from CSV, JSON/JSONL or Parquet through Hugging Face ``datasets`` loaders;
images from an image folder (one subfolder per class) or MedMNIST-layout NPZ arrays.
Every source yields a ``RawData``: integer labels under a fixed ``LabelSet`` plus either
texts or uint8 images (N, C, H, W). Problems raise ``DataError`` naming the file.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.config import BUILTIN_SOURCES, DataConfig, resolve_path
from common.errors import DataError

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

TABLE_SOURCES = ("csv", "json", "jsonl", "parquet")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
BUILTIN_TEST_FRACTION = 0.2
BUILTIN_TEST_SEED = 1234
# A derived label set with more classes than half the records is a free-text column, not labels
# (checked from this many records on: a tiny file can have one record per class).
FREE_TEXT_MIN_RECORDS = 20


@dataclass(frozen=True)
class LabelSet:
    """The ordered label names; index i is class i on every site and on the server."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise DataError("the label set is empty")

    @staticmethod
    def derive(raw_labels: list[str]) -> LabelSet:
        """Sorted unique labels; numerically when all are integers."""
        uniq = set(raw_labels)
        if all(_is_int(v) for v in uniq):
            return LabelSet(tuple(sorted(uniq, key=int)))
        return LabelSet(tuple(sorted(uniq)))

    def encode(self, raw_labels: list[str], where: str) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.names)}
        out = np.empty(len(raw_labels), dtype=np.int64)
        for row, value in enumerate(raw_labels):
            if value not in index:
                shown = ", ".join(self.names[:10]) + (", ..." if len(self.names) > 10 else "")
                # The value is not shown: with data.label_field on the wrong column it is a record's text.
                raise DataError(
                    f"{where}: record {row}'s label is not in the label set [{shown}] (config key 'data.labels')"
                )
            out[row] = index[value]
        return out

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class RawData:
    """Labelled records of one split. Exactly one of ``texts`` / ``images`` is set."""

    labels: np.ndarray  # int64 class indices
    texts: tuple[str, ...] | None = None
    images: np.ndarray | None = None  # uint8 (N, C, H, W)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray | list[int]) -> RawData:
        idx = np.asarray(indices, dtype=np.int64)
        return RawData(
            labels=self.labels[idx],
            texts=tuple(self.texts[i] for i in idx) if self.texts is not None else None,
            images=self.images[idx] if self.images is not None else None,
        )


@dataclass(frozen=True)
class Unlabelled:
    """Records read from a file before labels are mapped (labels as strings)."""

    raw_labels: list[str]
    texts: tuple[str, ...] | None = None
    images: np.ndarray | None = None

    def with_labels(self, labels: LabelSet, where: str) -> RawData:
        return RawData(labels.encode(self.raw_labels, where), self.texts, self.images)

    def within(self, labels: LabelSet) -> tuple[Unlabelled, int]:
        """The records whose label is in ``labels``, and how many were left out. A site answers a job
        the same way whatever labels its records carry: a record outside the job's set is dropped
        locally, never refused (a refusal would tell the coordinator that such a record exists)."""
        known = set(labels.names)
        keep = [i for i, v in enumerate(self.raw_labels) if v in known]
        if len(keep) == len(self.raw_labels):
            return self, 0
        return (
            Unlabelled(
                raw_labels=[self.raw_labels[i] for i in keep],
                texts=tuple(self.texts[i] for i in keep) if self.texts is not None else None,
                images=self.images[np.asarray(keep, dtype=np.int64)] if self.images is not None else None,
            ),
            len(self.raw_labels) - len(keep),
        )


# --------------------------------------------------------------------------- public API


def read_train(cfg: DataConfig, path: str | None = None) -> Unlabelled:
    """The training records of a source (a site's own file when ``path`` is given)."""
    key = "node config 'data-path'" if path else "config key 'data.path'"
    records = _read(cfg, path or cfg.path, split="train", key=key)
    if cfg.max_samples and len(records.raw_labels) > cfg.max_samples:
        records = _head(records, cfg.max_samples)
    return records


def read_test(cfg: DataConfig) -> Unlabelled | None:
    """The server-side test records, or None when the source has no test split."""
    if cfg.test_path:
        return _read(cfg, cfg.test_path, split="test", key="config key 'data.test_path'")
    if cfg.source in BUILTIN_SOURCES or cfg.source == "npz":
        return _read(cfg, cfg.path, split="test", key="config key 'data.path'")
    return None


def read_column(cfg: DataConfig, field: str, key: str = "--id-field") -> list[str]:
    """One column of a table file (``data.source`` csv/json/jsonl/parquet at ``data.path``) as text,
    in file order: e.g. the record ids the scorer writes beside its predictions. ``key`` names
    where ``field`` came from, for error messages."""
    if cfg.source not in TABLE_SOURCES:
        raise DataError(f"{key} '{field}': only table files ({', '.join(TABLE_SOURCES)}) have named columns")
    path = str(resolve_path(cfg.path))
    _require_file(path, "config key 'data.path'")
    ds = _load_table(path, cfg.source)
    if field not in ds.column_names:
        raise DataError(f"{path}: column '{field}' ({key}) not found; columns are: {', '.join(ds.column_names)}")
    return ["" if v is None else str(v) for v in ds[field]]


def label_set(cfg: DataConfig, train: Unlabelled | None = None) -> LabelSet:
    """The configured label set, or one derived from the training records."""
    if cfg.labels:
        return LabelSet(cfg.labels)
    if train is None:
        raise DataError("config key 'data.labels' must be set when no training data is given")
    derived = LabelSet.derive(train.raw_labels)
    n = len(train.raw_labels)
    if n >= FREE_TEXT_MIN_RECORDS and len(derived) > n // 2:
        where = resolve_path(cfg.path) if cfg.path else f"built-in '{cfg.source}'"
        raise DataError(
            f"{where}: column '{cfg.label_field}' (config key 'data.label_field') has {len(derived)} distinct values "
            f"in {n} records: free text, not labels; name the label column, or list the classes in 'data.labels'"
        )
    if len(derived) < 2:
        where = resolve_path(cfg.path) if cfg.path else f"built-in '{cfg.source}'"
        raise DataError(
            f"{where}: every record has the label {derived.names[0]!r}; a classifier needs at least 2 labels "
            f"(config keys 'data.label_field', 'data.labels')"
        )
    return derived


def check_sites(cfg: DataConfig, seed: int) -> list[int]:
    """What the simulated sites will do with the training data, checked once before a simulation
    starts: every record's label is in the (resolved) label set, and each of ``data.num_sites``
    partitions gets the 2 records a site needs (training + held-out). Sites check again. Returns
    the partitions' sizes."""
    from common.partition import partition_indices

    where = str(resolve_path(cfg.path)) if cfg.path else f"built-in '{cfg.source}'"
    records = read_train(cfg)
    labels = LabelSet(cfg.labels) if cfg.labels else label_set(cfg, records)
    raw = records.with_labels(labels, where=where)
    need = 2 * cfg.num_sites
    if len(raw) < need:
        capped = f" (the first data.max_samples={cfg.max_samples})" if cfg.max_samples else ""
        keys = "'data.num_sites', 'data.max_samples'" if cfg.max_samples else "'data.num_sites'"
        raise DataError(
            f"{where}: {len(raw)} training records{capped} cannot be split into {cfg.num_sites} sites of at "
            f"least 2 (training + held-out) (config keys {keys})"
        )
    parts = partition_indices(raw.labels, cfg, seed)
    for site, part in enumerate(parts):
        if len(part) < 2:
            raise DataError(
                f"{where}: site-{site}'s partition has {len(part)} record(s), at least 2 are needed "
                f"(config keys 'data.num_sites', 'data.partitioner', 'data.alpha', 'data.min_partition_size')"
            )
    return [len(part) for part in parts]


# --------------------------------------------------------------------------- readers


def _read(cfg: DataConfig, path: str, split: str, key: str) -> Unlabelled:
    """The records of one file; ``key`` names where the path came from, for error messages."""
    if cfg.source == "digits":
        return _digits(split)
    if cfg.source == "synthetic_text":
        from common.synthetic import synthetic_text

        texts, labels = synthetic_text(split)
        return Unlabelled(labels, texts=tuple(texts))
    if cfg.source == "synthetic_images":
        return _synthetic_images(split)
    file = resolve_path(path)
    if cfg.source in TABLE_SOURCES:
        return _read_table(str(file), cfg.source, cfg.text_field, cfg.label_field, key)
    if cfg.source == "npz":
        return _read_npz(str(file), split, cfg.image_size, cfg.pixel_max, key)
    return _read_image_folder(str(file), cfg.image_size, cfg.pixel_max, key)


def _head(records: Unlabelled, n: int) -> Unlabelled:
    return Unlabelled(
        records.raw_labels[:n],
        texts=records.texts[:n] if records.texts is not None else None,
        images=records.images[:n] if records.images is not None else None,
    )


@functools.lru_cache(maxsize=16)
def _read_table(path: str, source: str, text_field: str, label_field: str, key: str) -> Unlabelled:
    _require_file(path, key)
    ds = _load_table(path, source)
    for key, column in (("data.text_field", text_field), ("data.label_field", label_field)):
        if column not in ds.column_names:
            raise DataError(
                f"{path}: column '{column}' (config key '{key}') not found; columns are: {', '.join(ds.column_names)}"
            )
    if len(ds) == 0:
        raise DataError(f"{path}: file has no records")
    texts = ds[text_field]
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()), None)
    if bad is not None:
        raise DataError(f"{path}: record {bad} has an empty or non-text '{text_field}' value")
    labels = [_label_str(v, f"{path} ({key})", i) for i, v in enumerate(ds[label_field])]
    return Unlabelled(labels, texts=tuple(texts))


def _load_table(path: str, source: str) -> datasets.Dataset:
    """A table file through Hugging Face ``datasets``; an unreadable one raises DataError."""
    import datasets

    builder = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}[source]
    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(logging.CRITICAL)  # its "Failed to read file" line: the reason below
    try:
        return datasets.load_dataset(builder, data_files=path, split="train")
    except Exception as exc:  # the loaders raise many types for unreadable files
        raise DataError(f"cannot read {path} as {source}: {_load_reason(exc)}") from None
    finally:
        datasets.logging.set_verbosity(verbosity)


@functools.lru_cache(maxsize=8)
def _read_npz(path: str, split: str, image_size: int, pixel_max: float, key: str) -> Unlabelled:
    import zipfile

    _require_file(path, key)
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and suggest allow_pickle
        raise DataError(f"{path} is not an .npz archive (a zip of .npy arrays, as numpy.savez writes) ({key})")
    try:
        arrays = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"cannot read {path} as npz: {_first_line(exc)}") from None
    want = (f"{split}_images", f"{split}_labels")
    missing = [k for k in want if k not in arrays.files]
    if missing:
        raise DataError(
            f"{path}: array '{missing[0]}' not found (MedMNIST layout expected); arrays are: {', '.join(arrays.files)}"
        )
    try:
        images, labels = np.asarray(arrays[want[0]]), np.asarray(arrays[want[1]])
    except ValueError:  # object arrays need pickle, which is never allowed
        raise DataError(
            f"{path}: '{want[0]}' and '{want[1]}' must be numeric arrays; this file stores Python objects, "
            f"which Confide does not unpickle ({key})"
        ) from None
    if images.ndim == 0 or labels.ndim == 0 or len(labels) != len(images):
        raise DataError(
            f"{path}: '{want[0]}' holds {len(images) if images.ndim else 0} images but '{want[1]}' "
            f"{len(labels) if labels.ndim else 0} labels; they must match one to one"
        )
    if len(images) == 0:
        raise DataError(f"{path}: '{want[0]}' holds no images ({key})")
    labels = labels.reshape(len(images), -1)
    if labels.shape[1] != 1:
        raise DataError(f"{path}: '{want[1]}' must hold one label per image (multi-label unsupported)")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{path}: '{want[0]}' has shape {images.shape}; expected (N,H,W) or (N,H,W,C)")
    images = _to_uint8(images, f"{path} ('{want[0]}')", pixel_max)
    raw_labels = [_label_str(v, f"{path} ('{want[1]}', {key})", i) for i, v in enumerate(labels[:, 0])]
    return Unlabelled(raw_labels, images=_resize(images, image_size))


@functools.lru_cache(maxsize=8)
def _read_image_folder(path: str, image_size: int, pixel_max: float, key: str) -> Unlabelled:
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if root.is_file():
        raise DataError(f"{path} is a file; an image folder (one subfolder per class) is expected ({key})")
    if not root.is_dir():
        raise DataError(f"image folder not found: {path} ({key})")
    files = sorted(p for p in root.glob("*/*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{path}: no images found (expected one subfolder per class)")
    images, labels = [], []
    for file in files:
        try:
            with Image.open(file) as im:
                wide = im.mode in ("I", "I;16", "I;16B", "I;16L", "F")  # 16/32-bit grey: RGB would clip it
                arr = _to_uint8(np.asarray(im), str(file), pixel_max) if wide else np.asarray(im.convert("RGB"))
                if wide:
                    arr = np.repeat(arr[..., None], 3, axis=-1)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"unreadable image {file}: {_first_line(exc)}") from None
        images.append(arr)
        labels.append(file.parent.name)
    shapes = {a.shape for a in images}
    if len(shapes) > 1 and not image_size:
        raise DataError(f"{path}: images have different sizes {sorted(shapes)[:3]}; set 'data.image_size'")
    if image_size:
        images = [np.asarray(Image.fromarray(a).resize((image_size, image_size))) for a in images]
    stacked = np.stack(images).transpose(0, 3, 1, 2)
    if all(np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]) for a in images):
        stacked = stacked[:, :1]
    return Unlabelled(labels, images=np.ascontiguousarray(stacked))


@functools.lru_cache(maxsize=2)
def _digits(split: str) -> Unlabelled:
    """scikit-learn's real 8x8 handwritten digits (1,797 images), with a fixed test split."""
    pixels, target = digits_file()
    images = np.round(pixels.reshape(-1, 1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(BUILTIN_TEST_SEED).permutation(len(images))
    n_test = int(len(images) * BUILTIN_TEST_FRACTION)
    idx = order[:n_test] if split == "test" else order[n_test:]
    return Unlabelled([str(int(v)) for v in target[idx]], images=images[idx])


def digits_file() -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``load_digits`` reads them (pixels 0-16, one row per image; the labels), from
    the file scikit-learn ships, without importing scikit-learn: that import costs each site process
    and each simulated site about a second, for one small file."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in digits data set needs scikit-learn installed (it ships the file)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


@functools.lru_cache(maxsize=2)
def _synthetic_images(split: str) -> Unlabelled:
    """A generated (not real) 8x8 image set, 10 classes, 50,000 training records (common/synthetic.py)."""
    from common.synthetic import synthetic_images

    images, classes = synthetic_images(split)
    names = [str(c) for c in range(int(classes.max()) + 1)]
    return Unlabelled([names[c] for c in classes], images=images)


# --------------------------------------------------------------------------- helpers


def _label_str(value: object, source: str, row: int) -> str:
    """One record's label as text. Labels are strings or non-negative integers: -1 (a common "unknown"
    code) or 2.5 would otherwise become classes of their own. Messages name the row, never the value
    (it may be the record's content)."""
    where = f"{source}: record {row}"
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise DataError(f"{where} has no label")
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        raise DataError(f"{where}'s label is a {type(value).__name__}; one label per record expected")
    if isinstance(value, (bool, np.bool_)):
        return str(value).lower()
    if isinstance(value, (float, np.floating)):
        if not float(value).is_integer():
            raise DataError(f"{where}'s label is a fraction; labels must be non-negative integers or strings")
        value = int(value)
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise DataError(f"{where}'s label is negative; labels must be non-negative integers or strings")
        return str(int(value))
    return str(value).strip()


def _require_file(path: str, key: str) -> None:
    if Path(path).is_dir():
        raise DataError(f"{path} is a directory; a data file is expected ({key})")
    if Path(path).exists() and not Path(path).is_file():
        raise DataError(f"{path} is not a regular file (a device or pipe); a data file is expected ({key})")
    if not Path(path).is_file():
        raise DataError(f"data file not found: {path} ({key})")


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _to_uint8(images: np.ndarray, where: str, pixel_max: float) -> np.ndarray:
    """8-bit pixels. Other ranges are converted only when data.pixel_max says what white is: a
    12-bit scan clipped to 255, or [0, 1] floats read as near-black, would train without a word."""
    if images.dtype == np.uint8 and not pixel_max:
        return np.ascontiguousarray(images)
    if not np.issubdtype(images.dtype, np.number) or np.issubdtype(images.dtype, np.complexfloating):
        raise DataError(f"{where}: images are {images.dtype}; numeric pixel values expected")
    if not np.isfinite(images).all():
        raise DataError(f"{where}: images contain non-finite values")
    lo = float(images.min()) if images.size else 0.0
    hi = float(images.max()) if images.size else 0.0
    if lo < 0:
        raise DataError(
            f"{where}: images have negative values ({images.dtype}, e.g. standardised); give raw pixel values "
            "(Confide normalises them itself) and set data.pixel_max to the value of white"
        )
    if not pixel_max:
        if np.issubdtype(images.dtype, np.integer) and hi <= 255:
            return np.ascontiguousarray(images.astype(np.uint8))
        kind = "floats" if np.issubdtype(images.dtype, np.floating) else f"{images.dtype} values"
        raise DataError(
            f"{where}: images are {kind} up to {hi:g}, not 8-bit; set data.pixel_max to the value of white "
            "(1 for images in [0, 1], 4095 for 12-bit, 65535 for 16-bit)"
        )
    if hi > pixel_max:
        raise DataError(f"{where}: pixel values reach {hi:g}, above data.pixel_max={pixel_max:g}")
    return np.round(images.astype(np.float64) * (255.0 / pixel_max)).astype(np.uint8)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if not size or images.shape[-1] == size and images.shape[-2] == size:
        return images
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(images).float()
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def _load_reason(exc: BaseException) -> str:
    """Why Hugging Face ``datasets`` could not load a file, without any record's content.

    ``datasets`` wraps the parser's error in "An error occurred while generating the dataset";
    the parser's own first line (pandas: "Expected 2 fields in line 3, saw 3"; pyarrow: "JSON
    parse error: Invalid value. in row 1") says where. Anything quoted in it (which could be a
    value from the file) is replaced by '...': error messages may travel to the coordinator."""
    import re

    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    if any("corresponds to no data" in str(e) for e in chain):
        return "the file has no records"
    inner = next((e for e in chain if type(e).__name__ != "DatasetGenerationError"), chain[0])
    return re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", _first_line(inner))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
