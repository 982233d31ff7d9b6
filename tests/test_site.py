"""A site's identity from its node config, and its records in simulation or from its own file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common import config as config_mod
from common.data import LabelSet
from common.errors import ConfigError, DataError
from common.site import SiteSpec, site_records

pytestmark = pytest.mark.unit

DIGITS = LabelSet(tuple(str(i) for i in range(10)))


def test_simulation_node_config() -> None:
    spec = SiteSpec.from_node_config({"partition-id": 1, "num-partitions": 3})
    assert spec == SiteSpec(name="site-1", partition_id=1, num_partitions=3)


def test_deployment_node_config() -> None:
    spec = SiteSpec.from_node_config({"site-name": "st-marys", "data-path": "/data/train.csv"})
    assert spec.name == "st-marys" and spec.data_path == "/data/train.csv" and spec.partition_id is None


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({}, "needs 'data-path'"),
        ({"partition-id": 3, "num-partitions": 3}, "outside"),
        ({"partition-id": "x", "num-partitions": 3}, "'partition-id' must be an integer"),
    ],
)
def test_bad_node_config_is_named(node_config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SiteSpec.from_node_config(node_config)


def test_simulated_sites_get_disjoint_partitions_split_into_train_and_held_out() -> None:
    exp = config_mod.load(None, {"data.num_sites": 3, "data.max_samples": 300})
    seen: list[int] = []
    for pid in range(3):
        train, val = site_records(exp, SiteSpec(f"s{pid}", pid, 3), DIGITS)
        assert len(train) > len(val) > 0
        seen.append(len(train) + len(val))
    assert sum(seen) == 300


def test_site_count_mismatch_explains_the_fix() -> None:
    exp = config_mod.load(None, {"data.num_sites": 3})
    with pytest.raises(ConfigError, match="num-supernodes=3"):
        site_records(exp, SiteSpec("s0", 0, 2), DIGITS)


def test_site_with_its_own_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "site.npz"
    np.savez(path, train_images=rng.integers(0, 255, (10, 8, 8), np.uint8), train_labels=np.arange(10) % 2)
    exp = config_mod.load(None, {"data.source": "npz", "data.path": "unused.npz", "data.labels": "0,1"})
    train, val = site_records(exp, SiteSpec("own", data_path=str(path)), LabelSet(("0", "1")))
    assert len(train) == 8 and len(val) == 2
    # records whose label is outside the job's set are dropped at the site, never refused
    train, val = site_records(exp, SiteSpec("own", data_path=str(path)), LabelSet(("0", "9")))
    assert len(train) + len(val) == 5 and set(np.concatenate([train.labels, val.labels])) == {0}


def test_a_record_outside_the_jobs_labels_changes_nothing_the_coordinator_sees(tmp_path: Path) -> None:
    """The label-oracle pair: a deployed site holding D (with one record labelled '7') and one
    holding D minus that record answer a job declaring labels 0,1,2 the same way: no refusal, the
    same metric keys and, under DP with site metrics withheld, the same values (the record counts
    round to the same batch count, so even the DP parameters agree). Only the DP-protected weights
    may differ."""
    from common.privacy.governance.policy import from_node_config
    from common.site import site_runtime, train_round

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (31, 8, 8), np.uint8), np.array([0, 1, 2] * 10 + [7])
    keys = {"data.source": "npz", "data.path": "unused.npz", "data.labels": "0,1,2", "model.name": "resnet8"}
    keys |= {"model.norm": "group", "privacy.mode": "local", "privacy.noise_multiplier": 1.0, "train.max_steps": 1}
    exp = config_mod.load(None, keys)
    replies = []
    for name, n in (("with", 31), ("without", 30)):
        path = tmp_path / f"{name}.npz"
        np.savez(path, train_images=images[:n], train_labels=labels[:n])
        node = {"data-path": str(path), "site-name": "st marys", "ledger-dir": str(tmp_path / name)}
        spec = SiteSpec.from_node_config(node)
        runtime = site_runtime(exp, spec, LabelSet(("0", "1", "2")))
        metrics = train_round(exp, runtime, 1, "5", from_node_config(node, deployed=True))
        replies.append(metrics)
    assert replies[0] == replies[1]


def test_empty_partition_is_reported() -> None:
    exp = config_mod.load(None, {"data.num_sites": 3, "data.max_samples": 2, "strategy.min_sites": 1})
    with pytest.raises(DataError, match="cannot be split into 3 sites"):
        site_records(exp, SiteSpec("s2", 2, 3), DIGITS)


def test_a_last_batch_of_one_record_does_not_crash_a_batchnorm_model(tmp_path: Path) -> None:
    """A valid config whose site ends each epoch on a batch of one record (2 sites,
    data.max_samples=162 crashed with BatchNorm's "Expected more than 1 value per channel"): the
    round trains on the other records; the same loader without the fix still crashes, so the
    case is real."""
    import torch

    from common.batches import make_loader
    from common.site import site_runtime, train_round
    from common.train import train

    for max_samples in range(100, 200):  # the first size that leaves one record for the last batch
        exp = config_mod.load(None, {"data.num_sites": 1, "strategy.min_sites": 1, "data.max_samples": max_samples,
                                     "output_dir": str(tmp_path)})  # fmt: skip
        if len(site_records(exp, SiteSpec("s0", 0, 1), DIGITS)[0]) % 32 == 1:
            break
    rt = site_runtime(exp, SiteSpec("s0", 0, 1), DIGITS)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in rt.model.modules())
    metrics = train_round(exp, rt, 1, "run")
    assert metrics["train_steps"] == (len(rt.train_set) - 1) // 32  # the lone last record left out
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        train(rt.model, make_loader(rt.train_set, 32, shuffle=True), exp.train)


def test_a_process_serving_many_sites_keeps_a_bounded_cache_and_one_model() -> None:
    """A simulation worker serves many sites in turn (1,000 sites, 10 a round): it keeps the last
    _CACHE_SIZE sites' data and one model per experiment, whatever the number of sites."""
    from common import site

    exp = config_mod.load(None, {"model.name": "resnet8", "data.source": "synthetic_images",
                                 "data.num_sites": 1_000, "strategy.min_sites": 2})  # fmt: skip
    site._CACHE.clear()
    runtimes = [site.site_runtime(exp, SiteSpec(f"s{i}", i, 1_000), DIGITS) for i in range(site._CACHE_SIZE + 4)]
    assert len(site._CACHE) == site._CACHE_SIZE
    assert {id(rt.model) for rt in runtimes} == {id(runtimes[0].model)}  # one model, shared
    assert len({len(rt.train_set) for rt in runtimes}) == 1 and len(runtimes[-1].train_set) == 40
    again = site.site_runtime(exp, SiteSpec("s11", 11, 1_000), DIGITS)
    assert again is runtimes[-1]  # the most recent sites are served from the cache
    assert all(key[1].name != "s0" for key in site._CACHE)  # the oldest were dropped
