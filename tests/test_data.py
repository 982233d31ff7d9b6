"""Data sources: every supported format from tiny files written here, labels, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import config as config_mod
from common.data import LabelSet, digits_file, label_set, read_test, read_train
from common.errors import DataError

pytestmark = pytest.mark.unit

ROWS = [("card lost", "card"), ("send money", "transfer"), ("lost my card", "card"), ("wire cash", "transfer")]


def text_cfg(source: str, path: Path, **kw: object):
    return config_mod.load(None, {"model.name": "bert", "data.source": source, "data.path": str(path), **kw}).data


def write_csv(path: Path, header: str = "text,category") -> Path:
    path.write_text(header + "\n" + "\n".join(f"{t},{c}" for t, c in ROWS) + "\n")
    return path


def test_csv_with_configured_fields(tmp_path: Path) -> None:
    cfg = text_cfg("csv", write_csv(tmp_path / "a.csv"), **{"data.label_field": "category"})
    rec = read_train(cfg)
    assert rec.texts == tuple(t for t, _ in ROWS)
    assert label_set(cfg, rec).names == ("card", "transfer")
    raw = rec.with_labels(label_set(cfg, rec), where="a.csv")
    assert raw.labels.tolist() == [0, 1, 0, 1]


def test_json_array_and_jsonl_with_other_field_names(tmp_path: Path) -> None:
    records = [{"input": t, "output": c} for t, c in ROWS]
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    for name, source in (("a.json", "json"), ("a.jsonl", "jsonl")):
        cfg = text_cfg(source, tmp_path / name, **{"data.text_field": "input", "data.label_field": "output"})
        assert read_train(cfg).raw_labels == [c for _, c in ROWS]


def test_parquet_with_integer_labels(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "a.parquet"
    datasets.Dataset.from_dict({"medical_abstract": ["a b", "c d", "e f"], "condition_label": [3, 1, 10]}).to_parquet(
        str(path)
    )
    cfg = text_cfg("parquet", path, **{"data.text_field": "medical_abstract", "data.label_field": "condition_label"})
    rec = read_train(cfg)
    assert label_set(cfg, rec).names == ("1", "3", "10")  # numeric order, not string order


def test_missing_file_and_missing_column_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found: .*missing.csv"):
        read_train(text_cfg("csv", tmp_path / "missing.csv"))
    cfg = text_cfg("csv", write_csv(tmp_path / "b.csv"), **{"data.label_field": "intent"})
    with pytest.raises(DataError, match=r"b.csv: column 'intent' \(config key 'data.label_field'\).*category"):
        read_train(cfg)


def test_label_outside_the_label_set_is_named(tmp_path: Path) -> None:
    cfg = text_cfg("csv", write_csv(tmp_path / "c.csv"), **{"data.label_field": "category", "data.labels": "card"})
    rec = read_train(cfg)
    with pytest.raises(DataError, match=r"c.csv: record 1's label is not in the label set"):
        rec.with_labels(label_set(cfg, rec), where="c.csv")


def test_npz_medmnist_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "m.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 255, (6, 28, 28), dtype=np.uint8),
        train_labels=np.array([[0], [1], [0], [1], [1], [0]]),
        test_images=rng.integers(0, 255, (2, 28, 28), dtype=np.uint8),
        test_labels=np.array([[1], [0]]),
    )
    cfg = config_mod.load(None, {"data.source": "npz", "data.path": str(path)}).data
    train = read_train(cfg)
    assert train.images.shape == (6, 1, 28, 28) and train.images.dtype == np.uint8
    assert read_test(cfg).images.shape == (2, 1, 28, 28)
    resized = config_mod.load(None, {"data.source": "npz", "data.path": str(path), "data.image_size": 14}).data
    assert read_train(resized).images.shape == (6, 1, 14, 14)


def test_npz_missing_array_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((2, 4, 4)))
    cfg = config_mod.load(None, {"data.source": "npz", "data.path": str(path)}).data
    with pytest.raises(DataError, match="bad.npz: array 'train_images' not found"):
        read_train(cfg)


def make_image_folder(root: Path) -> Path:
    for label, value in (("normal", 20), ("pneumonia", 200)):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10, 10), value + i, dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def test_image_folder_one_subfolder_per_class(tmp_path: Path) -> None:
    cfg = config_mod.load(None, {"data.source": "imagefolder", "data.path": str(make_image_folder(tmp_path / "img"))})
    rec = read_train(cfg.data)
    assert rec.images.shape == (6, 1, 10, 10)  # grayscale detected
    assert label_set(cfg.data, rec).names == ("normal", "pneumonia")


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "img2")
    (root / "normal" / "broken.png").write_bytes(b"not an image")
    cfg = config_mod.load(None, {"data.source": "imagefolder", "data.path": str(root)})
    with pytest.raises(DataError, match="unreadable image .*broken.png"):
        read_train(cfg.data)


def test_builtin_offline_sets_have_disjoint_fixed_test_splits() -> None:
    digits = config_mod.load().data
    train, test = read_train(digits), read_test(digits)
    assert len(train.raw_labels) + len(test.raw_labels) == 1797
    assert len(set(train.raw_labels)) == 10
    text = config_mod.load(None, {"model.name": "bert", "data.source": "synthetic_text"}).data
    assert len(read_train(text).texts) == 1200 and len(read_test(text).texts) == 300


def test_the_digits_file_reads_as_scikit_learn_loads_it() -> None:
    """The built-in digits are read from scikit-learn's file without importing it: the same pixels
    and labels as its own loader, in the same order."""
    from sklearn.datasets import load_digits

    pixels, target = digits_file()
    bunch = load_digits()
    assert np.array_equal(pixels, bunch.data) and np.array_equal(target, bunch.target)


def test_max_samples_caps_training_records() -> None:
    cfg = config_mod.load(None, {"data.max_samples": 50}).data
    assert len(read_train(cfg).raw_labels) == 50


def test_label_set_rejects_empty() -> None:
    with pytest.raises(DataError):
        LabelSet(())


# --------------------------------------------------------------------------- the bad-input battery (data)


@pytest.mark.parametrize(
    ("name", "content", "source", "reason"),
    [
        ("empty.csv", "", "csv", "No columns to parse"),
        ("header.csv", "text,category\n", "csv", "the file has no records"),
        ("ragged.csv", "text,category\ncard lost,card\nsecret words,card,EXTRA\n", "csv", "line 3"),
        ("bad.json", '[{"text": "secret words", "category": ', "json", "position 37"),
        ("bad.jsonl", '{"text": "a", "category": "card"}\n{"text": secret words}\n', "jsonl", "row 1"),
    ],
)
def test_unreadable_tables_say_why_and_where_without_record_content(
    tmp_path: Path, name: str, content: str, source: str, reason: str
) -> None:
    """The parser's reason (the line or row), not `datasets`' generic "An error occurred while
    generating the dataset"; and nothing from the file's records in the message."""
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as err:
        read_train(text_cfg(source, path, **{"data.label_field": "category"}))
    message = str(err.value)
    assert str(path) in message and reason in message, message
    assert "error occurred while generating" not in message
    assert "secret" not in message and "EXTRA" not in message


def test_a_missing_test_file_is_blamed_on_data_test_path(tmp_path: Path) -> None:
    cfg = text_cfg("csv", write_csv(tmp_path / "a.csv"), **{"data.test_path": str(tmp_path / "test.csv")})
    with pytest.raises(DataError, match=r"test\.csv \(config key 'data\.test_path'\)"):
        read_test(cfg)


def test_a_site_file_is_blamed_on_its_node_config(tmp_path: Path) -> None:
    cfg = text_cfg("csv", write_csv(tmp_path / "a.csv"))
    with pytest.raises(DataError, match=r"mine\.csv \(node config 'data-path'\)"):
        read_train(cfg, str(tmp_path / "mine.csv"))


def test_npz_with_unequal_image_and_label_counts_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, train_images=np.zeros((5, 8, 8), np.uint8), train_labels=np.zeros(4, np.int64))
    with pytest.raises(DataError, match=r"'train_images' holds 5 images but 'train_labels' 4 labels"):
        read_train(config_mod.load(None, {"data.source": "npz", "data.path": str(path)}).data)


def test_a_file_that_is_no_npz_archive_is_named_without_pickle_advice(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(DataError) as err:
        read_train(config_mod.load(None, {"data.source": "npz", "data.path": str(path)}).data)
    assert "is not an .npz archive" in str(err.value) and "data.path" in str(err.value)
    assert "pickle" not in str(err.value)


def test_a_list_valued_label_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a", "category": "card"}\n{"text": "b", "category": ["card", "secret"]}\n')
    with pytest.raises(DataError, match=r"record 1's label is a list; one label per record") as err:
        read_train(text_cfg("jsonl", path, **{"data.label_field": "category"}))
    assert "secret" not in str(err.value)


def test_check_sites_refuses_what_a_simulated_site_would(tmp_path: Path) -> None:
    """Too few records for data.num_sites, a data.max_samples too small, or a training label
    outside data.labels were found by the sites, after the simulation engine started."""
    from common.data import check_sites

    path = write_csv(tmp_path / "a.csv")  # 4 records, labels card/transfer
    check_sites(text_cfg("csv", path, **{"data.label_field": "category", "data.num_sites": 2}), seed=0)
    with pytest.raises(DataError, match=r"a.csv: 4 training records cannot be split into 3 sites.*'data.num_sites'"):
        check_sites(text_cfg("csv", path, **{"data.label_field": "category", "data.num_sites": 3}), seed=0)
    capped = text_cfg("csv", path, **{"data.label_field": "category", "data.num_sites": 2, "data.max_samples": 3})
    with pytest.raises(DataError, match=r"data.max_samples=3.*'data.max_samples'"):
        check_sites(capped, seed=0)
    outside = text_cfg("csv", path, **{"data.label_field": "category", "data.num_sites": 2, "data.labels": "card,x"})
    with pytest.raises(DataError, match=r"a.csv: record 1's label is not in the label set"):
        check_sites(outside, seed=0)


def test_a_training_file_with_one_label_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("text,category\na,card\nb,card\n")
    cfg = text_cfg("csv", path, **{"data.label_field": "category"})
    with pytest.raises(DataError, match=r"one.csv: every record has the label 'card'; a classifier needs at least 2"):
        label_set(cfg, read_train(cfg))


def test_generated_image_set_is_deterministic_sized_and_learnable() -> None:
    """'synthetic_images' (scale benchmarks): 50,000 + 2,000 generated 8x8 records, 10 balanced
    classes, the same arrays on every call, and a nearest-class-mean rule beats chance by far."""
    from common.synthetic import synthetic_images

    cfg = config_mod.load(None, {"model.name": "resnet8", "data.source": "synthetic_images"}).data
    train, test = read_train(cfg), read_test(cfg)
    assert train.images.shape == (50_000, 1, 8, 8) and train.images.dtype == np.uint8
    assert test is not None and test.images.shape == (2_000, 1, 8, 8)
    assert label_set(cfg, train).names == tuple(str(i) for i in range(10))
    images, classes = synthetic_images.__wrapped__("train")  # regenerated, not the cached arrays
    assert np.array_equal(images, train.images) and [str(c) for c in classes[:100]] == train.raw_labels[:100]
    assert np.bincount(classes).min() > 4_500
    x = train.images.reshape(len(train.images), -1).astype(np.float32)
    means = np.stack([x[classes == c].mean(0) for c in range(10)])
    t = test.images.reshape(len(test.images), -1).astype(np.float32)
    guess = ((t[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (guess == np.array([int(v) for v in test.raw_labels])).mean() > 0.5
