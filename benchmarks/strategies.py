"""Pooled vs federated strategies on a real dataset, beside the simple baseline on the same split.

For one task (an experiment YAML) it runs: the pooled reference (1 site, all training data), then
each ``--strategies`` name for each ``--partitioners`` split (5 sites), with the same model, rounds,
local epochs and test split. Every row reports the final-round test accuracy, the best round's
(an upper bound: chosen on the test set), the test accuracy of the round a user could select
without the test set (the highest site-weighted held-out accuracy, i.e. federated validation), the
worst site's held-out accuracy, and wall time. The non-federated baseline (TF-IDF + logistic
regression for text, logistic regression on pixels for images: benchmarks/baselines.py) is trained
on the same training file and scored on the same test split. Results are saved after every run, so
a stopped benchmark keeps its finished rows.

    python -m benchmarks.strategies --task pneumonia --set model.name=resnet20
    python -m benchmarks.strategies --task pneumonia --strategies fedavg,fedprox --partitioners iid
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._util import RESULTS, machine, read_rounds, table
from common import config as config_mod
from common.errors import ConfideError
from server.flower_runtime import setup_logging
from simulations.local import parse_sets, simulate

REPO = Path(__file__).resolve().parents[1]
TASKS = {
    "pneumonia": "simulations/configs/hospital_resnet_pneumonia.yaml",
    "banking77": "simulations/configs/bank_bert_banking77.yaml",
}
SITES = 5


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Final, best (test-chosen) and validation-selected test accuracy of one run's rounds."""
    central = [r["central"].get("accuracy") for r in rounds]
    trained = [r for r in rounds[1:] if r["central"]]
    best = max(trained, key=lambda r: r["central"]["accuracy"])
    with_val = [r for r in trained if r["federated"].get("accuracy") is not None]
    selected = max(with_val, key=lambda r: r["federated"]["accuracy"]) if with_val else None
    last = rounds[-1]
    return {
        "final": last["central"]["accuracy"],
        "final_macro_f1": last["central"]["macro_f1"],
        "best": best["central"]["accuracy"],
        "best_round": best["round"],
        "selected": selected["central"]["accuracy"] if selected else None,
        "selected_round": selected["round"] if selected else None,
        "worst_site": last["federated"].get("worst_accuracy"),
        "curve": central,
    }


def run_one(task: str, strategy: str, partitioner: str, sites: int, extra: dict[str, Any]) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "data.num_sites": sites,
        "strategy.min_sites": min(sites, 3),
        "data.partitioner": partitioner,
        "strategy.name": strategy,
        "output_dir": "runs/benchmarks",
        "name": f"strat-{task}-{strategy}-{partitioner}-{sites}site",
        **extra,
    }
    exp = config_mod.load(REPO / TASKS[task], overrides)
    start = time.perf_counter()
    # One torch thread per site, pooled included: two threads on a core shared with other work spin in
    # OpenMP barriers (an epoch of ResNet-20 took 283 s instead of ~17 s).
    path = simulate(exp, cpus_per_site=1.0, threads_per_site=1)
    return {
        "strategy": strategy,
        "partitioner": partitioner,
        "sites": sites,
        "run": str(path),
        "seconds": round(time.perf_counter() - start, 1),
        **summarize(read_rounds(path)),
    }


def render(result: dict[str, Any]) -> str:
    rows = []
    base = result.get("baseline")
    if base:
        rows.append([f"{base['method']} (not federated, all data)", base["accuracy"], "-", "-", "-", "-", "-"])
        single = base["single_site"]
        alone = f"{single['mean_accuracy']:.3f} / {single['worst_accuracy']:.3f}"
        rows.append([f"{base['method']}, one site alone (mean / worst)", alone, "-", "-", "-", "-", "-"])
    for r in result["runs"]:
        setting = "pooled, 1 site" if r["sites"] == 1 else f"{r['strategy']}, {r['sites']} sites {r['partitioner']}"
        selected = "-" if r["selected"] is None else f"{r['selected']:.3f} (r{r['selected_round']})"
        worst = "-" if r["worst_site"] is None else f"{r['worst_site']:.3f}"
        rows.append([setting, r["final"], f"{r['best']:.3f} (r{r['best_round']})", selected, worst,
                     " ".join(f"{a:.2f}" for a in r["curve"]), f"{r['seconds'] / 60:.0f} min"])  # fmt: skip
    headers = ["setting", "final test acc", "best round (test-chosen)", "held-out-selected round",
               "worst site", "test accuracy by round", "wall"]  # fmt: skip
    return table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=list(TASKS))
    parser.add_argument("--strategies", default="fedavg,fedprox,fedavgm,fedadam")
    parser.add_argument("--partitioners", default="dirichlet,iid")
    parser.add_argument("--no-pooled", action="store_true", help="skip the pooled reference run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the non-federated baseline")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--out", default="", help="results file (default: benchmarks/results/strategies-<task>-*.json)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        extra = parse_sets(args.set)
        exp = config_mod.load(REPO / TASKS[args.task], extra)
        out = Path(args.out) if args.out else RESULTS / f"strategies-{args.task}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"machine": machine(), "task": args.task, "overrides": extra, "runs": []}
        if not args.no_baseline:
            from benchmarks.baselines import baseline

            result["baseline"] = baseline(exp)
        plan = [] if args.no_pooled else [("fedavg", "iid", 1)]
        plan += [(s, p, SITES) for p in args.partitioners.split(",") for s in args.strategies.split(",")]
        for strategy, partitioner, sites in plan:
            result["runs"].append(run_one(args.task, strategy, partitioner, sites, extra))
            out.write_text(json.dumps(result, indent=2))
            print(render(result), flush=True)
    except ConfideError as exc:
        print(f"confide: {exc}", file=sys.stderr)
        return 2
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
