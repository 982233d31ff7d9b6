"""Orchestration overhead and bytes on the wire: 3 simulated sites, MiniLM and ResNet-18.

overhead = round wall time / slowest site's pure local training time (measured by the site
around its training loop), for rounds after the first (the first includes process start,
data loading and model construction). Evaluation is switched off in these runs so that a
round is exactly: send global weights, train at every site, receive, check and aggregate.
All three sites train at the same time (fractional Ray CPUs), one torch thread each.

    python -m benchmarks.overhead            # both models
    python -m benchmarks.overhead --models resnet18
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks._util import read_rounds, save, table
from common import config as config_mod
from server.flower_runtime import setup_logging
from simulations.local import simulate

SETUPS = {
    # digits: ~380 training records per site; 6 local epochs make training dominate as it does in practice.
    "resnet18": {"data.source": "digits", "model.name": "resnet18", "train.local_epochs": 6},
    "minilm": {
        "data.source": "synthetic_text",
        "model.name": "bert",
        "model.max_length": 32,
        "train.local_epochs": 2,
        "train.lr": 1e-4,
    },
}


def run(model: str, rounds: int) -> dict:
    exp = config_mod.load(
        None,
        {
            **SETUPS[model],
            "name": f"overhead-{model}",
            "data.num_sites": 3,
            "strategy.min_sites": 3,
            "strategy.rounds": rounds,
            "strategy.fraction_evaluate": 0.0,
            "data.central_eval": False,
            "output_dir": "runs/benchmarks",
            "train.threads": 1,
        },
    )
    path = simulate(exp, cpus_per_site=0.66, threads_per_site=1)
    steady = [r for r in read_rounds(path) if r["round"] >= 2]
    ratios = [r["wall_seconds"] / r["slowest_site_train_seconds"] for r in steady]
    last = steady[-1]
    up = [s["train"]["bytes_up"] for s in last["sites"].values()]
    return {
        "model": model,
        "run": str(path),
        "rounds_measured": len(steady),
        "round_wall_s": statistics.mean(r["wall_seconds"] for r in steady),
        "slowest_site_train_s": statistics.mean(r["slowest_site_train_seconds"] for r in steady),
        "overhead_ratio_mean": statistics.mean(ratios),
        "overhead_ratio_max": max(ratios),
        "bytes_down_per_site": last["bytes_down_per_site"],
        "bytes_up_per_site": max(up),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    setup_logging()
    results = [run(m, args.rounds) for m in args.models]
    path = save("overhead", {"results": results})
    print(
        table(
            [
                "model",
                "round wall (s)",
                "slowest site train (s)",
                "overhead mean",
                "overhead max",
                "MB down/site/round",
                "MB up/site/round",
            ],
            [
                [
                    r["model"],
                    r["round_wall_s"],
                    r["slowest_site_train_s"],
                    r["overhead_ratio_mean"],
                    r["overhead_ratio_max"],
                    r["bytes_down_per_site"] / 1e6,
                    r["bytes_up_per_site"] / 1e6,
                ]
                for r in results
            ],
        )
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
