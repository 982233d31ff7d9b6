"""A stratified, shuffled subset of a labelled CSV, for reduced-budget studies.

``data.max_samples`` keeps the *first* N records, which is wrong for files sorted by label
(BANKING77's train.csv is: its first 1,200 rows hold 9 of the 77 intents). This writes k
records per label, seeded and shuffled, to a new file outside the repository:

    python -m simulations.study.subsample ../shared/datasets/banking77/train.csv category 16 \
        /tmp/confide-study/banking77-train-16pc.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from common.errors import ConfideError


def subsample(source: Path, label_field: str, per_label: int, out: Path, seed: int = 0) -> int:
    """Write up to ``per_label`` records of every label to ``out``; returns the record count."""
    with source.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        fields = reader.fieldnames or []
    if label_field not in fields:
        raise ConfideError(f"{source}: column '{label_field}' not found; columns are: {', '.join(fields)}")
    rng = np.random.default_rng(seed)
    labels = np.array([r[label_field] for r in rows])
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == lab))[:per_label] for lab in sorted(set(labels.tolist()))]
    )
    keep = rng.permutation(keep)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows[i] for i in keep)
    return len(keep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("label_field")
    parser.add_argument("per_label", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        n = subsample(args.source, args.label_field, args.per_label, args.out, args.seed)
    except ConfideError as exc:
        print(f"confide-subsample: {exc}", file=sys.stderr)
        return 2
    print(f"{n} records -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
