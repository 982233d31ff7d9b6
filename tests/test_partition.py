"""Partitioning: sites are disjoint and cover the data, seeded, Dirichlet skew is visible."""

from __future__ import annotations

import numpy as np
import pytest

from common import config as config_mod
from common.errors import DataError
from common.partition import partition_indices, train_val_split

pytestmark = pytest.mark.unit

LABELS = np.repeat(np.arange(5), 200).astype(np.int64)  # 1000 records, 5 balanced classes


def parts(kind: str, seed: int = 0, alpha: float = 0.5, sites: int = 4) -> list[np.ndarray]:
    cfg = config_mod.load(None, {"data.partitioner": kind, "data.alpha": alpha, "data.num_sites": sites}).data
    return partition_indices(LABELS, cfg, seed)


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_sites_are_disjoint_and_cover_everything(kind: str) -> None:
    p = parts(kind)
    joined = np.concatenate(p)
    assert len(joined) == len(set(joined.tolist())) == len(LABELS)


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_partitioning_is_seeded(kind: str) -> None:
    assert all(np.array_equal(a, b) for a, b in zip(parts(kind, seed=3), parts(kind, seed=3)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts(kind, seed=3), parts(kind, seed=4)))


def label_skew(p: list[np.ndarray]) -> float:
    """Mean total-variation distance between each site's label histogram and the global one."""
    glob = np.bincount(LABELS, minlength=5) / len(LABELS)
    return float(np.mean([0.5 * np.abs(np.bincount(LABELS[i], minlength=5) / len(i) - glob).sum() for i in p]))


def test_dirichlet_skew_is_visible_and_shrinks_with_alpha() -> None:
    iid, skewed, mild = (
        label_skew(parts("iid")),
        label_skew(parts("dirichlet", alpha=0.1)),
        label_skew(parts("dirichlet", alpha=100.0)),
    )
    assert iid < 0.05
    assert skewed > 0.3
    assert mild < skewed


def test_impossible_split_is_reported_with_keys() -> None:
    cfg = config_mod.load(
        None,
        {"data.partitioner": "dirichlet", "data.num_sites": 4, "data.min_partition_size": 400, "strategy.min_sites": 2},
    ).data
    with pytest.raises(DataError, match="data.num_sites"):
        partition_indices(LABELS[:500], cfg, seed=0)


def test_train_val_split_is_disjoint_and_nonempty() -> None:
    tr, va = train_val_split(10, 0.2, seed=1, site="s")
    assert len(tr) == 8 and len(va) == 2 and not set(tr) & set(va)
    tr, va = train_val_split(2, 0.01, seed=1, site="s")
    assert len(tr) == 1 and len(va) == 1
    with pytest.raises(DataError, match="site 's' has 1 record"):
        train_val_split(1, 0.2, seed=1, site="s")


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_one_site_partition_is_the_same_as_from_the_full_split(kind: str) -> None:
    from common.partition import partition_of

    cfg = config_mod.load(None, {"data.partitioner": kind, "data.num_sites": 4}).data
    full = partition_indices(LABELS, cfg, 3)
    for pid in (0, 3):
        assert np.array_equal(partition_of(LABELS, cfg, 3, pid), full[pid])


def test_an_iid_site_materialises_only_its_own_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 sites: building one site loads one shard, not all 1,000 (scale)."""
    from flwr_datasets.partitioner import IidPartitioner

    from common.partition import partition_of

    loaded: list[int] = []
    original = IidPartitioner.load_partition
    monkeypatch.setattr(IidPartitioner, "load_partition", lambda self, i: loaded.append(i) or original(self, i))
    labels = np.arange(5_000, dtype=np.int64) % 7  # a label array no other test caches
    cfg = config_mod.load(None, {"data.num_sites": 1_000, "strategy.min_sites": 2}).data
    mine = partition_of(labels, cfg, 0, 417)
    assert loaded == [417] and len(mine) == 5
    with pytest.raises(DataError, match="cannot be split into 1000 sites"):
        partition_of(labels[:999], cfg, 0, 0)
