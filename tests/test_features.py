"""Fixed features for the linear model: each is a function of one record alone, with the values
worked out by hand from tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common import config as config_mod
from common.data import RawData
from common.errors import ConfigError, DataError
from common.features import FeatureSet, cache, featurize, normalise_scatter, width
from common.features.ngrams import hashed_ngrams
from common.features.scatter import channels, scatter

pytestmark = pytest.mark.unit


def model_cfg(**kw: object) -> config_mod.ModelConfig:
    return config_mod.ModelConfig(name="linear", **kw)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFIDE_FEATURE_CACHE", "off")


def images(*arrays: np.ndarray) -> RawData:
    x = np.stack(arrays).astype(np.uint8)[:, None]
    return RawData(labels=np.zeros(len(x), dtype=np.int64), images=x)


# --------------------------------------------------------------------------- hashed n-grams


def test_ngrams_are_sublinear_counts_with_unit_norm_blocks() -> None:
    """'cat cat': word block log(1+2) for 'cat' and log(1+1) for 'cat cat', scaled to unit norm
    (0.8457, 0.5336); character block: the 9 char_wb 2-4 grams of ' cat ' (' c', 'ca', 'at', 't ',
    ' ca', 'cat', 'at ', ' cat', 'cat '), each seen twice, so equal: 1/3 each; the sum of the two unit
    blocks has norm sqrt(2). Raw counts (no log) would give 0.894 / 0.447 in the word block."""
    row = hashed_ngrams(["cat cat"], 2**20).toarray()[0]
    values = sorted(row[row > 0].tolist(), reverse=True)
    unit = math.sqrt(math.log(3) ** 2 + math.log(2) ** 2)
    expected = [math.log(3) / unit / math.sqrt(2), math.log(2) / unit / math.sqrt(2)] + [1 / 3 / math.sqrt(2)] * 9
    assert values == pytest.approx(expected, abs=1e-6)


def test_ngrams_need_no_vocabulary_and_read_one_record_at_a_time() -> None:
    """The same text gets the same vector alone or among other texts (no vocabulary, no document
    frequencies: nothing about one record reaches another's features, at one site or across sites)."""
    texts = ["card not arrived yet", "how do I top up", "card not arrived yet!"]
    alone = hashed_ngrams([texts[0]], 512).toarray()
    together = hashed_ngrams(texts, 512).toarray()
    assert np.array_equal(alone[0], together[0])
    assert np.linalg.norm(together, axis=1) == pytest.approx([1, 1, 1], abs=1e-6)
    assert hashed_ngrams([""], 512).nnz == 0  # no n-gram: a zero vector, not a division by zero


# --------------------------------------------------------------------------- scattering


def test_scatter_channel_count() -> None:
    """J=2, L=8: 1 order-0 map, J*L = 16 order-1 maps, L*L pairs (j1=0, j2=1) = 64 order-2 maps."""
    assert channels(2, 8) == 81
    assert scatter(torch.zeros(3, 2, 28, 28)).shape == (3, 2 * 81, 7, 7)
    assert scatter(torch.zeros(1, 1, 30, 30)).shape == (1, 81, 8, 8)  # ceil(30 / 4)


def test_scatter_of_a_constant_image() -> None:
    """The low-pass filter has unit gain at frequency 0 and every wavelet has mean 0: a constant
    image c scatters to c in the order-0 map and to 0 in every order-1 and order-2 map."""
    out = scatter(torch.full((1, 1, 16, 16), 0.7))
    assert out[0, 0] == pytest.approx(torch.full((4, 4), 0.7), abs=1e-5)
    assert out[0, 1:].abs().max() < 1e-5


def test_scatter_order_one_sees_orientation() -> None:
    """Stripes along one axis excite one orientation most; the transposed stripes excite the
    orientation a quarter turn (L/2 = 4 steps of pi/8) away."""
    stripes = torch.cos(torch.arange(32) * math.pi / 2).repeat(32, 1)  # varies along the width
    first = slice(1, 9)  # order 1, j = 0, orientations 0..7
    a = scatter(stripes[None, None])[0, first].mean(dim=(1, 2))
    b = scatter(stripes.T.contiguous()[None, None])[0, first].mean(dim=(1, 2))
    assert (int(a.argmax()) - int(b.argmax())) % 8 == 4
    assert a.max() > 5 * a.min()


def test_scatter_normalisation_is_per_record() -> None:
    """Each record's order-0, order-1 and order-2 maps are standardised over that record alone,
    and the vector has unit norm: scaling one image's maps leaves its features unchanged."""
    maps = torch.rand(2, 1, 81, 7, 7)
    out = normalise_scatter(maps)
    assert out.norm(dim=1) == pytest.approx(torch.ones(2), abs=1e-5)
    scaled = maps.clone()
    scaled[1] *= 10
    assert torch.allclose(normalise_scatter(scaled), out, atol=1e-5)
    order0 = out[0, :49]  # one record's order-0 block: mean 0 before the unit-norm scaling
    assert float(order0.mean()) == pytest.approx(0.0, abs=1e-5)


# --------------------------------------------------------------------------- pixels, sets, config


def test_pixel_features_scale_to_minus_one_one() -> None:
    """uint8 0 -> -1, 255 -> 1, 51 -> 2 * 0.2 - 1 = -0.6, flattened row by row."""
    img = np.array([[0, 255], [51, 0]] + [[0, 0]] * 6)[:, :2]
    x = np.zeros((8, 8), dtype=np.uint8)
    x[:2, :2] = img[:2]
    out = featurize(images(x), model_cfg(features="pixels", image_size=8))
    assert out.shape == (1, 64)
    assert out[0, :2].tolist() == pytest.approx([-1.0, 1.0])
    assert out[0, 8:10].tolist() == pytest.approx([-0.6, -1.0])


@pytest.mark.parametrize("features", ["pixels", "scatter"])
def test_image_features_of_a_record_do_not_depend_on_the_others(features: str) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 16, 16))
    cfg = model_cfg(features=features, image_size=16)
    assert torch.allclose(featurize(images(a), cfg)[0], featurize(images(a, b), cfg)[0], atol=1e-5)
    assert featurize(images(a, b), cfg).shape == (2, width(cfg))


def test_feature_set_batches_dense_rows_from_sparse_ngrams() -> None:
    raw = RawData(labels=np.array([2, 0, 1]), texts=("a card", "top up", "exchange rate"))
    data = FeatureSet(raw, model_cfg(features="ngrams", hash_dim=64))
    batch = data.collate([data[2], data[0]])
    assert batch["features"].shape == (2, 64) and batch["features"].dtype == torch.float32
    assert batch["labels"].tolist() == [1, 2]
    assert torch.allclose(batch["features"][1], torch.from_numpy(hashed_ngrams(["a card"], 64).toarray()[0]))


def test_feature_scale_multiplies_every_record_by_a_constant() -> None:
    """model.feature_scale 3: pixels 0 -> -3, 255 -> 3 (3 x [-1, 1]); an n-gram row's unit norm
    becomes 3, still sparse; the scale is the same constant for every record (no data statistic)."""
    x = np.zeros((8, 8), dtype=np.uint8)
    x[0, 1] = 255
    out = featurize(images(x), model_cfg(features="pixels", image_size=8, feature_scale=3.0))
    assert out[0, :2].tolist() == pytest.approx([-3.0, 3.0])
    rows = featurize(RawData(labels=np.zeros(2, dtype=np.int64), texts=("a card", "top up now")),
                     model_cfg(features="ngrams", hash_dim=64, feature_scale=3.0))  # fmt: skip
    assert rows.format == "csr" and rows.dtype == np.float32
    assert np.linalg.norm(rows.toarray(), axis=1) == pytest.approx([3.0, 3.0], abs=1e-5)
    with pytest.raises(ConfigError, match="model.feature_scale"):
        model_cfg(features="ngrams", feature_scale=0.0)


def test_image_size_mismatch_names_the_key() -> None:
    with pytest.raises(DataError, match="model.image_size"):
        featurize(images(np.zeros((8, 8))), model_cfg(features="pixels", image_size=28))


@pytest.mark.parametrize(
    ("features", "why"),
    [("pixel", "unknown feature 'pixel'"), ("ngrams+ngrams", "twice"), ("scatter+ngrams", "only text features")],
)
def test_bad_feature_lists_are_refused(features: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"model.features.*{why}"):
        model_cfg(features=features)


def test_text_features_make_a_text_model() -> None:
    assert model_cfg(features="encoder+ngrams").is_text
    assert model_cfg(features="ngrams").feature_names == ("ngrams",)
    assert not model_cfg(features="scatter").is_text
    with pytest.raises(ConfigError, match="train.augment"):
        config_mod.load(None, {"model.name": "linear", "model.features": "pixels", "train.augment": "crop"})


def test_cache_stores_once_and_keys_on_the_records(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CONFIDE_FEATURE_CACHE", str(tmp_path))
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.ones(2)

    k1 = cache.key("scatter", 2, np.zeros((2, 2), dtype=np.uint8))
    k2 = cache.key("scatter", 2, np.ones((2, 2), dtype=np.uint8))
    assert k1 != k2
    assert cache.load_or(k1, compute).tolist() == [1.0, 1.0]
    assert cache.load_or(k1, compute).tolist() == [1.0, 1.0]
    assert len(calls) == 1  # the second call read the file
    cache.load_or(k2, compute)
    assert len(calls) == 2
