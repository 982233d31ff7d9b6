"""Linear recipes on fixed features, federated, against the pooled logistic-regression baselines.

Each row is a real simulated run (``simulations.local.simulate``: Flower's simulation engine, the
sites' own code, 5 sites, Dirichlet 0.5) of ``model.name: linear`` with one ``model.features``,
without DP and with DP-SGD at every site (whole-training epsilon 8, delta 1/N per site), scored on
the experiment's central test split: the exported model (without DP the round with the best
held-out accuracy at the sites, ``strategy.final_model: best_held_out``; under DP the last round;
with ``--set strategy.final_model=tail_average`` the mean of the last rounds' models, scored from
its export). Beside them: the pooled baselines on the same test split (``benchmarks.baselines``:
TF-IDF + logistic regression, pixels + logistic regression, all training records in one place),
read from their committed result.

    python -m benchmarks.linear --task pneumonia --features pixels,scatter
    python -m benchmarks.linear --task banking77 --features encoder,ngrams,encoder+ngrams --epsilon off,8
    python -m benchmarks.linear --task banking77-small --features encoder+ngrams,encoder --epsilon off,8

``banking77-small`` (``benchmarks.banking77_small``: five intents, 700 cleaned training queries, 3 IID
sites) is built from the shared BANKING77 files into ``runs/data/banking77-small`` at every run, and
its TF-IDF + logistic regression baseline (``benchmarks.baselines.baseline``) is computed on the same
files in the same run.

Features are cached per site on its disk (``common.features.cache``); the first run of a feature
pays for computing them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._util import RESULTS, read_rounds, save, table
from common import config as config_mod
from common.export import load_model
from common.train import evaluate
from server.flower_runtime import setup_logging
from server.run import _central_loader
from server.selection import tail_rounds
from simulations.local import simulate

REPO = Path(__file__).resolve().parents[1]
TASKS = {
    "pneumonia": ("simulations/configs/pneumonia_linear_scatter.yaml", "../shared/datasets/pneumoniamnist"),
    "banking77": ("simulations/configs/banking77_linear_encoder.yaml", "../shared/datasets/banking77"),
    "banking77-small": ("simulations/configs/banking77_linear_small.yaml", "../shared/datasets/banking77"),
}
SMALL_DATA = "runs/data/banking77-small"
# What changes under DP-SGD (beside privacy.*): larger (Poisson) batches, and the last round's model
# (choosing a round by the sites' held-out accuracy would need those released outside epsilon).
DP_RECIPE: dict[str, dict[str, Any]] = {
    # Full-batch DP-SGD steps (the config's batch; sample rate 1), fewer rounds at a larger lr, class
    # weights from the data set's published prevalence (a site's own counts would be a record-dependent
    # input outside DP-SGD), and the mean of the last 20 rounds' models (post-processing, no epsilon).
    "pneumonia": {
        "train.class_weight": "1.94,0.674",
        "train.lr": 3.0,
        "strategy.rounds": 100,
        "strategy.final_model": "tail_average",
        "strategy.tail_rounds": 20,
    },
    "banking77": {"train.batch_size": 256, "strategy.final_model": "last"},
    # ~210 records a site: an expected batch of 128 (a sample rate of ~0.6, two steps an epoch), and
    # fewer, smaller noisy steps than without DP (2 local epochs, lr 0.5): the last round's model is
    # exported, so the noise of its last steps is not averaged away.
    "banking77-small": {
        "train.batch_size": 128,
        "train.local_epochs": 2,
        "train.lr": 0.5,
        "strategy.final_model": "last",
    },
}


def run(task: str, features: str, epsilon: float | None, extra: dict[str, Any]) -> dict[str, Any]:
    experiment, _ = TASKS[task]
    tag = "off" if epsilon is None else f"eps{epsilon:g}"
    name = f"linear-{task}-{features.replace('+', '-')}-{tag}"
    overrides: dict[str, Any] = {
        "model.features": features,
        # A folder of its own: simulate() finds its run as the new folder in output_dir, which a
        # concurrent benchmark writing to the same folder would confuse.
        "output_dir": f"runs/benchmarks/{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        "name": name,
    }
    if epsilon is not None:
        overrides.update({"privacy.mode": "local", "privacy.target_epsilon": epsilon, **DP_RECIPE[task]})
    overrides.update(extra)
    exp = config_mod.load(REPO / experiment, overrides)
    start = time.perf_counter()
    path = simulate(exp, cpus_per_site=1.0, threads_per_site=1)
    return summarise(path, exp, features, epsilon, overrides, time.perf_counter() - start)


def summarise(
    path: Path, exp: Any, features: str, epsilon: float | None, overrides: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """One table row from a finished run folder."""
    rounds = read_rounds(path)
    last = rounds[-1]
    chosen = exported(rounds) if exp.strategy.final_model == "best_held_out" else last
    averaged = ""
    if exp.strategy.final_model == "tail_average":  # a mean of rounds: its own test metrics
        first = exp.strategy.rounds - tail_rounds(exp) + 1
        averaged = f"{first}-{exp.strategy.rounds}"
        chosen = {"round": f"mean of {averaged}", "central": export_metrics(path, exp)}
    sites = last.get("privacy", {}).get("sites", {})
    return {
        "features": features,
        "sites": exp.data.num_sites,
        "epsilon": epsilon,
        # This job's epsilon (what its noise was calibrated to); a site's ledger also counts earlier
        # jobs on the same data, so its cumulative epsilon grows with every rerun of a benchmark.
        "max_site_epsilon": max((v.get("epsilon_run", v["epsilon"]) for v in sites.values()), default=None),
        "max_site_epsilon_ledger": max((v["epsilon"] for v in sites.values()), default=None),
        "rounds": len(rounds) - 1,
        "exported_round": chosen["round"],
        "averaged_rounds": averaged,
        "accuracy": chosen["central"]["accuracy"],
        "macro_f1": chosen["central"]["macro_f1"],
        "last_round_accuracy": last["central"]["accuracy"],
        "curve": [r["central"].get("accuracy") for r in rounds],
        "overrides": overrides,
        "run": str(path),
        "seconds": round(seconds, 1),
    }


def export_metrics(path: Path, exp: Any) -> dict[str, Any]:
    """The exported model (``path/model``) scored on the experiment's central test split."""
    saved = load_model(path / "model")
    loader = _central_loader(exp, saved.labels)
    assert loader is not None, "the experiment has no central test split"
    return evaluate(saved.model, loader, len(saved.labels)).as_dict()


def exported(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round ``strategy.final_model: best_held_out`` exports (server/run.py ``ModelSelection``):
    the first with the highest site-weighted held-out accuracy; the last when no round has one."""
    best = None
    for line in rounds[1:]:
        acc = (line.get("federated") or {}).get("accuracy")
        if acc is not None and (best is None or acc > best[0]):
            best = (acc, line)
    return best[1] if best else rounds[-1]


def pooled_baseline(task: str) -> dict[str, Any]:
    """The newest committed ``benchmarks.baselines`` result for the task (pooled, same test split);
    for ``banking77-small`` computed now, on the files this run built."""
    if task == "banking77-small":
        from benchmarks.baselines import baseline

        data = baseline(config_mod.load(REPO / TASKS[task][0]))
        keep = ("method", "accuracy", "macro_f1", "C", "train_records", "test_records")
        return {**{k: data[k] for k in keep}, "single_site_mean_accuracy": data["single_site"]["mean_accuracy"],
                "file": "computed in this run"}  # fmt: skip
    found = sorted(RESULTS.glob(f"baselines-{task}-*.json"))
    if not found:
        return {}
    data = json.loads(found[-1].read_text())
    keep = ("method", "accuracy", "macro_f1")
    return {**{k: data[k] for k in keep}, "file": found[-1].name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=list(TASKS))
    parser.add_argument("--features", required=True, help="comma-separated model.features values")
    parser.add_argument("--epsilon", default="off,8", help="comma-separated: 'off' (no DP) or an epsilon")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override, every run")
    parser.add_argument("--from-run", default="", metavar="RUN", help="no run: the row of a finished run folder")
    args = parser.parse_args()
    setup_logging()
    if args.from_run:
        folder = Path(args.from_run)
        exp = config_mod.load(folder / "config.yaml", {})
        eps = exp.privacy.target_epsilon if exp.privacy.mode == "local" else None
        row = summarise(folder, exp, exp.model.features, eps, {"from_run": str(folder)}, 0.0)
        payload = {"task": args.task, "rows": [row], "pooled_baseline": pooled_baseline(args.task)}
        path = save(f"linear-{args.task}", payload)
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), f"saved {path}")
        return
    if not (REPO / TASKS[args.task][1]).exists():
        sys.exit(f"dataset not found: {REPO / TASKS[args.task][1]}")
    if args.task == "banking77-small":
        from benchmarks.banking77_small import build

        build(REPO / TASKS[args.task][1], REPO / SMALL_DATA)
    from simulations.local import parse_sets

    extra = parse_sets(args.set)
    epsilons = [None if e.strip() == "off" else float(e) for e in args.epsilon.split(",")]
    baseline = pooled_baseline(args.task)
    rows: list[dict[str, Any]] = []
    path = None
    for features in args.features.split(","):
        for eps in epsilons:
            rows.append(run(args.task, features.strip(), eps, extra))
            # Saved after every run: a long benchmark's finished rows are never lost.
            if path is not None:
                path.unlink()
            path = save(f"linear-{args.task}", {"task": args.task, "rows": rows, "pooled_baseline": baseline})
    headers = ["recipe", "epsilon", "test accuracy (round)", "macro-F1", "accuracy by round", "seconds"]
    lines = [
        [f"linear on {r['features']}, {r['sites']} sites",
         "-" if r["max_site_epsilon"] is None else f"{r['max_site_epsilon']:.2f}",
         f"{r['accuracy']:.3f} ({r['exported_round']})", r["macro_f1"],
         " ".join(f"{a:.3f}" for a in r["curve"][1:]), r["seconds"]]
        for r in rows
    ]  # fmt: skip
    if baseline:
        lines.append([f"pooled {baseline['method']} ({baseline['file']})", "-", baseline["accuracy"],
                      baseline["macro_f1"], "", ""])  # fmt: skip
    print(table(headers, lines))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
