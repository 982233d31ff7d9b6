"""Federated vs pooled accuracy on the real datasets in ../shared/datasets.

Federated: 5 sites, Dirichlet alpha=0.5. Pooled: the same experiment with 1 site (all the
training data in one place). Same rounds, local epochs and test split, so both see the same
number of passes over the data. Reports the server-side test accuracy and macro-F1 after
the last round, and federated/pooled.

    python -m benchmarks.accuracy --task pneumonia
    python -m benchmarks.accuracy --task banking77
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks._util import read_rounds, save, table
from common import config as config_mod
from server.flower_runtime import setup_logging
from simulations.local import simulate

REPO = Path(__file__).resolve().parents[1]
TASKS = {
    "pneumonia": ("simulations/configs/hospital_resnet_pneumonia.yaml", "../shared/datasets/pneumoniamnist"),
    "banking77": ("simulations/configs/bank_bert_banking77.yaml", "../shared/datasets/banking77"),
}


def run(task: str, sites: int, extra: dict) -> dict:
    experiment, _ = TASKS[task]
    overrides = {
        "data.num_sites": sites,
        "strategy.min_sites": min(sites, 3),
        "output_dir": "runs/benchmarks",
        "name": f"acc-{task}-{sites}site",
        **extra,
    }
    if sites == 1:
        overrides["data.partitioner"] = "iid"
    exp = config_mod.load(REPO / experiment, overrides)
    path = simulate(exp, cpus_per_site=1.0 if sites > 1 else 2.0, threads_per_site=1 if sites > 1 else 2)
    rounds = read_rounds(path)
    last = rounds[-1]
    return {
        "task": task,
        "sites": sites,
        "run": str(path),
        "rounds": len(rounds) - 1,
        "accuracy": last["central"]["accuracy"],
        "macro_f1": last["central"]["macro_f1"],
        "worst_site_accuracy": last["federated"].get("worst_accuracy"),
        "curve": [r["central"].get("accuracy") for r in rounds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True, choices=list(TASKS))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra override for both runs, e.g. strategy.rounds=5",
    )
    args = parser.parse_args()
    setup_logging()
    if not (REPO / TASKS[args.task][1]).exists():
        sys.exit(f"dataset not found: {REPO / TASKS[args.task][1]}")
    from simulations.local import parse_sets

    extra = parse_sets(args.set)
    fed, pooled = run(args.task, 5, extra), run(args.task, 1, extra)
    ratio = fed["accuracy"] / pooled["accuracy"]
    path = save(f"accuracy-{args.task}", {"federated": fed, "pooled": pooled, "ratio": ratio, "overrides": extra})
    print(
        table(
            ["setting", "test accuracy", "macro-F1", "worst site (held-out)", "accuracy by round"],
            [
                [
                    "federated, 5 sites, Dirichlet 0.5",
                    fed["accuracy"],
                    fed["macro_f1"],
                    fed["worst_site_accuracy"],
                    " ".join(f"{a:.3f}" for a in fed["curve"]),
                ],
                [
                    "pooled, 1 site",
                    pooled["accuracy"],
                    pooled["macro_f1"],
                    pooled["worst_site_accuracy"],
                    " ".join(f"{a:.3f}" for a in pooled["curve"]),
                ],
            ],
        )
    )
    print(f"federated / pooled = {ratio:.4f}; saved {path}")


if __name__ == "__main__":
    main()
