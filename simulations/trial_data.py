"""Trial data for a deployment: each site's training file and the coordinator's test file.

    python -m simulations.trial_data DEPLOY [--sites site-a,site-b]   # = docker/make-trial-data.sh

Writes, in the layout ``docker/compose.yaml`` mounts, from the offline default data set
(scikit-learn's real 8x8 handwritten digits, bundled with scikit-learn: no download):

    DEPLOY/<site>/data/train.npz        train_images (N,8,8) uint8, train_labels (N,1): one IID share
    DEPLOY/coordinator/data/test.npz    test_images, test_labels: the digits' fixed test split

The split into sites is Confide's own IID partition (``data.partitioner: iid``, seed 0), so each
site holds records no other site has. Existing files are replaced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from common.config import DataConfig
from common.data import read_test, read_train
from common.partition import partition_indices

DIGITS = DataConfig(source="digits")


def _save(path: Path, split: str, images: np.ndarray, labels: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"{split}_images": images[:, 0], f"{split}_labels": np.array(labels, np.int64)[:, None]})


def write_trial_data(deploy: Path, sites: list[str], seed: int = 0) -> dict[str, int]:
    """Write every site's share and the coordinator's test set; returns records per file."""
    train = read_train(DIGITS)
    labels = np.array([int(v) for v in train.raw_labels])
    cfg = DataConfig(source="digits", num_sites=len(sites), partitioner="iid")
    counts = {}
    for site, idx in zip(sites, partition_indices(labels, cfg, seed), strict=True):
        assert train.images is not None
        _save(deploy / site / "data" / "train.npz", "train", train.images[idx], [train.raw_labels[i] for i in idx])
        counts[site] = len(idx)
    test = read_test(DIGITS)
    assert test is not None and test.images is not None
    _save(deploy / "coordinator" / "data" / "test.npz", "test", test.images, list(test.raw_labels))
    counts["coordinator"] = len(test.raw_labels)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docker/make-trial-data.sh", description=__doc__.splitlines()[0])
    parser.add_argument("deploy", type=Path, help="the trial's folder (docker/compose.yaml's CONFIDE_DEPLOY_DIR)")
    parser.add_argument("--sites", default="site-a,site-b", help="comma-separated site names (site-a,site-b)")
    args = parser.parse_args(argv)
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    if len(sites) < 1 or len(set(sites)) != len(sites):
        print(f"make-trial-data: --sites {args.sites!r} must name distinct sites", file=sys.stderr)
        return 2
    for name, n in write_trial_data(args.deploy, sites).items():
        where = "coordinator/data/test.npz" if name == "coordinator" else f"{name}/data/train.npz"
        print(f"{args.deploy / where}: {n} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
