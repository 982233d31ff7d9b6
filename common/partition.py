"""Splitting data into sites (simulation) and each site's data into train/held-out.

Partitioning uses flwr-datasets partitioners (IID, Dirichlet over labels), seeded, over
a Hugging Face dataset of (index, label) so the records themselves stay in numpy.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from common.config import DataConfig
from common.errors import DataError


def partition_indices(labels: np.ndarray, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """Record indices of each of ``cfg.num_sites`` disjoint partitions."""
    _check_size(labels, cfg)
    return list(
        _partition_cached(labels.tobytes(), cfg.num_sites, cfg.partitioner, cfg.alpha, cfg.min_partition_size, seed)
    )


def partition_of(labels: np.ndarray, cfg: DataConfig, seed: int, partition_id: int) -> np.ndarray:
    """Record indices of one site's partition (the same as ``partition_indices(...)[partition_id]``),
    materialised on demand: an IID site costs one shard of a shuffled index, whatever the number
    of sites; a Dirichlet assignment is drawn once per process (O(records)) and kept."""
    _check_size(labels, cfg)
    key = (labels.tobytes(), cfg.num_sites, cfg.partitioner, cfg.alpha, cfg.min_partition_size, seed)
    partitioner = _partitioner(*key)
    return _load(partitioner, partition_id, len(labels), cfg.num_sites)


def _check_size(labels: np.ndarray, cfg: DataConfig) -> None:
    if len(labels) < cfg.num_sites:
        raise DataError(
            f"{len(labels)} records cannot be split into {cfg.num_sites} sites (config key 'data.num_sites'); "
            "every site would need at least one record"
        )


@functools.lru_cache(maxsize=8)
def _partition_cached(
    label_bytes: bytes, num_sites: int, kind: str, alpha: float, min_size: int, seed: int
) -> tuple[np.ndarray, ...]:
    partitioner = _partitioner(label_bytes, num_sites, kind, alpha, min_size, seed)
    n = len(label_bytes) // np.dtype(np.int64).itemsize
    return tuple(_load(partitioner, i, n, num_sites) for i in range(num_sites))


@functools.lru_cache(maxsize=4)
def _partitioner(label_bytes: bytes, num_sites: int, kind: str, alpha: float, min_size: int, seed: int) -> Any:
    """A flwr-datasets partitioner over a dataset of (index, label); O(records), not O(sites)."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    labels = np.frombuffer(label_bytes, dtype=np.int64)
    ds = datasets.Dataset.from_dict({"index": np.arange(len(labels)), "label": labels})
    if kind == "iid":
        ds = ds.shuffle(seed=seed)  # IidPartitioner shards contiguously
        partitioner = IidPartitioner(num_partitions=num_sites)
    else:
        partitioner = DirichletPartitioner(
            num_partitions=num_sites,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_size,
            self_balancing=False,
            seed=seed,
        )
    partitioner.dataset = ds
    return partitioner


def _load(partitioner: Any, partition_id: int, num_records: int, num_sites: int) -> np.ndarray:
    try:
        return np.asarray(partitioner.load_partition(partition_id)["index"], dtype=np.int64)
    except (ValueError, IndexError) as exc:
        raise DataError(
            f"cannot split {num_records} records into {num_sites} sites "
            f"(config keys 'data.num_sites', 'data.alpha', 'data.min_partition_size'): {exc}"
        ) from None


def train_val_split(n: int, val_fraction: float, seed: int, site: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of a site's n records into (train, held-out) indices; both non-empty."""
    if n < 2:
        raise DataError(f"site '{site}' has {n} record(s); at least 2 are needed (train + held-out)")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
