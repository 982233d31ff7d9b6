"""Robustness to malicious sites: clean vs attacked accuracy for each attacker and aggregation rule.

Each cell is one federated run on scikit-learn's digits (1,437 training images, ResNet-8, IID
sites, 1 local epoch per round, 3 rounds) with Confide's own pieces, in one process instead of
Flower's engine (a simulation costs Ray's start-up and a process per site; this benchmark runs ~50
cells): every site trains with ``common.site.train_round`` (what a simulated site runs), a
malicious site's update is built by ``client.attacks`` (what ``client/faults.py`` sends), and the
coordinator is the strategy ``server.strategy.build_strategy`` builds (its update checks, norm and
direction rules, norm bound and the Flower aggregation rule). The test accuracy is the
coordinator's central evaluation on the digits test split after the last round.

Setups: 1 attacker of 5 sites, and 2 colluding attackers of 10 (the same attack at both).
Attackers (``faults.corrupt``): ``evade``, a flip scaled to 0.95 x the largest norm
the rule lets through (its own update's norm standing in for the median: x2.85 under
reject_norm_ratio 3, x10 where no norm rule rejects); ``bias``, its honest update plus a constant
direction of 2 x its norm; ``disguise``, the evading flip pushed along its honest sign pattern until
its cosine to its own update is 0.1 above ``min_cosine_to_median`` (the plain evading flip where that
rule is off); ``flip`` x10 (not run by default: it is ``evade`` wherever no norm rule rejects, and
the table shows the ``evade`` figure there). Rules: see ``RULES``. Krum is told the number of
attackers. ``--partitioner dirichlet`` splits the sites Dirichlet(0.5) by label instead of IID.

    nice -n 5 python -m benchmarks.attacks > /tmp/attacks.log 2>&1 &
    python -m benchmarks.attacks --rules fedavg,bound+reject3 --attacks clean,evade --seeds 0
    python -m benchmarks.attacks --setups 1of5 --rules fedavg,bound+cosine --attacks clean --partitioner dirichlet
    python -m benchmarks.attacks --table benchmarks/results/attacks-*.json   # one table of saved runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata

from benchmarks._util import RESULTS, machine, table
from client.attacks import attack, attack_cosine, attack_scale, bias_direction, corrupting
from common import config as config_mod
from common.config import ExperimentConfig
from common.data import LabelSet
from common.models import build_model
from common.site import SiteSpec, site_runtime, train_round
from common.train import evaluate
from common.weights import exchanged_state, get_weights, set_weights
from server.recorder import RoundRecorder
from server.run import _central_loader, resolve_labels
from server.strategy import build_strategy, to_weights

BASE: dict[str, Any] = {
    "model.name": "resnet8",
    "model.in_channels": 1,
    "model.small_input": True,
    "data.source": "digits",
    "data.partitioner": "iid",
    "train.local_epochs": 1,
    "train.batch_size": 32,
    "train.lr": 0.01,
    "strategy.rounds": 3,
    "strategy.fraction_evaluate": 0.0,
}
SETUPS = {"1of5": (5, 1), "2of10": (10, 2)}  # sites, attackers
# "evade" is the x10 flip wherever no norm rule rejects (FedAvg, the robust rules, the bound alone);
# "flip" adds the x10 flip against the rules that do (it is rejected there).
ATTACKS: dict[str, dict[str, Any]] = {
    "clean": {},
    "flip": {"faults.corrupt": "flip", "faults.corrupt_scale": 10.0},
    "evade": {"faults.corrupt": "evade", "faults.corrupt_scale": 10.0},
    "bias": {"faults.corrupt": "bias", "faults.corrupt_scale": 2.0},
    "disguise": {"faults.corrupt": "disguise", "faults.corrupt_scale": 10.0},
}
PARTITIONERS = ("iid", "dirichlet")  # dirichlet: data.alpha 0.5, the config's default
RULES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "reject3": {"strategy.reject_norm_ratio": 3.0},
    "fedmedian": {"strategy.name": "fedmedian"},
    "fedtrimmedavg": {"strategy.name": "fedtrimmedavg"},
    "krum": {"strategy.name": "krum"},
    "bound": {"strategy.norm_bound": "median"},
    "bound+reject3": {"strategy.norm_bound": "median", "strategy.reject_norm_ratio": 3.0},
    "bound+trimmed": {"strategy.norm_bound": "median", "strategy.name": "fedtrimmedavg"},
    "bound+cosine": {"strategy.norm_bound": "median", "strategy.min_cosine_to_median": 0.0},
}


def experiment(setup: str, rule: str, kind: str, seed: int, rounds: int, partitioner: str = "iid") -> ExperimentConfig:
    sites, attackers = SETUPS[setup]
    over: dict[str, Any] = {**BASE, "seed": seed, "data.num_sites": sites, "strategy.rounds": rounds,
                            "data.partitioner": partitioner, "strategy.min_sites": sites - attackers,
                            **RULES[rule]}  # fmt: skip
    if rule == "krum":
        over.update({"strategy.num_malicious": attackers, "strategy.min_sites": 2 * attackers + 3})
    if kind != "clean":
        over.update({**ATTACKS[kind], "faults.corrupt_site": 0, "faults.corrupt_count": attackers})
    return resolve_labels(config_mod.load(None, over))


def reply(node: int, site: str, weights: dict[str, np.ndarray], records: int):  # noqa: ANN201
    """A site's training reply as the coordinator receives it (a real Flower Message)."""
    meta = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=node, dst_node_id=0, reply_to_message_id="",
                    group_id="", created_at=time.time(), ttl=3600, message_type="train")  # fmt: skip
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()}),
            "metrics": MetricRecord({"weight": records, "num-examples": records}),
            "site": ConfigRecord({"name": site}),
        }
    )
    return make_message(meta, content=content)


def run_cell(exp: ExperimentConfig) -> dict[str, Any]:
    """One federated run: the central test accuracy after every round, what the coordinator excluded
    (and how many of those were honest sites), and per round the lowest cosine to the median update
    among the honest sites it accepted (and the highest among the attackers it accepted)."""
    labels = LabelSet(exp.data.labels)
    model = build_model(exp, len(labels))
    test_loader = _central_loader(exp, labels)
    assert test_loader is not None
    initial = get_weights(model)
    buffers = frozenset(n for n, _ in model.named_buffers()) & frozenset(initial)
    recorder = RoundRecorder(None)
    strategy = build_strategy(exp, initial, recorder, "attacks-benchmark", buffers)
    current = {k: v.detach().cpu().numpy().copy() for k, v in exchanged_state(model).items()}
    n = exp.data.num_sites
    direction = bias_direction(current, exp.seed) if exp.faults.corrupt == "bias" else None
    curve, rejected, honest_rejected, honest_min_cosine, attacker_max_cosine = [], 0, 0, [], []
    honest = {f"site-{pid}" for pid in range(n) if not corrupting(exp, pid)}
    for rnd in range(1, exp.strategy.rounds + 1):
        recorder.begin(rnd, bytes_down=0)
        strategy.global_arrays = current  # what configure_train records when it sends the model
        replies = []
        for pid in range(n):
            rt = site_runtime(exp, SiteSpec(name=f"site-{pid}", partition_id=pid, num_partitions=n), labels)
            set_weights(rt.model, current, source="the global model")
            train_round(exp, rt, rnd, "attacks-benchmark")
            got = {k: v.detach().cpu().numpy().copy() for k, v in exchanged_state(rt.model).items()}
            if corrupting(exp, pid):
                got = attack(exp.faults.corrupt, current, got, attack_scale(exp), direction, attack_cosine(exp))
            replies.append(reply(pid + 1, rt.spec.name, got, len(rt.train_set)))
        arrays, _ = strategy.aggregate_train(rnd, replies)
        excluded = [f["site"] for f in recorder.current.failures
                    if any(rule in f["reason"] for rule in ("reject_norm_ratio", "min_cosine_to_median"))]  # fmt: skip
        rejected += len(excluded)
        honest_rejected += sum(site in honest for site in excluded)
        cosines = [m["update_cosine_to_median"] for site, m in recorder.current.train.items() if site in honest]
        honest_min_cosine.append(round(min(cosines), 3) if cosines else None)
        bad = [m["update_cosine_to_median"] for site, m in recorder.current.train.items() if site not in honest]
        attacker_max_cosine.append(round(max(bad), 3) if bad else None)
        current = to_weights(arrays)
        set_weights(model, current, source="the aggregated global model")
        curve.append(round(evaluate(model, test_loader, len(labels)).as_dict()["accuracy"], 4))
        recorder.close(None)
    return {"final": curve[-1], "curve": curve, "rejected_updates": rejected, "honest_rejected": honest_rejected,
            "honest_min_cosine": honest_min_cosine, "attacker_max_cosine": attacker_max_cosine}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--attacks", default="clean,evade,bias")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rounds", type=int, default=BASE["strategy.rounds"])
    parser.add_argument("--partitioner", default="iid", choices=PARTITIONERS)
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print the table of saved results (merged)")
    args = parser.parse_args(argv)
    if args.table:
        print(summary([c for f in args.table for c in json.loads(Path(f).read_text())["cells"]]))
        return 0
    setups, rules, attacks = args.setups.split(","), args.rules.split(","), args.attacks.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    choices = (("--setups", SETUPS, setups), ("--rules", RULES, rules), ("--attacks", ATTACKS, attacks))
    for name, known, given in choices:
        unknown = [g for g in given if g not in known]
        if unknown:
            print(f"[confide] error: {name}: unknown {', '.join(unknown)} (known: {', '.join(known)})", file=sys.stderr)
            return 2
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    path = RESULTS / f"attacks-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"  # runs side by side
    RESULTS.mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    for setup in setups:
        for rule in rules:
            for kind in attacks:
                finals = []
                for seed in seeds:
                    t0 = time.monotonic()
                    result = run_cell(experiment(setup, rule, kind, seed, args.rounds, args.partitioner))
                    finals.append(result["final"])
                    cells.append({"setup": setup, "rule": rule, "attack": kind, "seed": seed,
                                  "partitioner": args.partitioner, **result,
                                  "seconds": round(time.monotonic() - t0, 1)})  # fmt: skip
                    print(f"[attacks] {setup} {rule} {kind} seed {seed}: {result['final']:.4f} "
                          f"(rejected {result['rejected_updates']}, {cells[-1]['seconds']}s)", flush=True)  # fmt: skip
                    payload = {"started": started, "command": " ".join(["python -m benchmarks.attacks", *sys.argv[1:]]),
                               "base": BASE, "machine": machine(), "cells": cells}  # fmt: skip
                    path.write_text(json.dumps(payload, indent=2))
    print(summary(cells))
    print(f"[attacks] saved {path}")
    return 0


def same_as_evade(rule: str, kind: str) -> bool:
    """Whether attack ``kind`` sends exactly the ``evade`` update under ``rule``: the x10 flip where
    no norm rule rejects, the disguise where no direction rule excludes."""
    if kind == "flip":
        return not RULES[rule].get("strategy.reject_norm_ratio")
    return kind == "disguise" and "strategy.min_cosine_to_median" not in RULES[rule]


def summary(cells: list[dict[str, Any]]) -> str:
    """Mean final accuracy per (setup, rule) and attack, in brackets its difference in points from
    FedAvg without attackers in the same setup (what the rule and the attack cost together). A
    flip or disguise cell not run where it is the same update as ``evade`` shows that figure,
    marked "= evade". A non-IID split is its own setup ("1of5 dirichlet")."""
    cells = [{**c, "setup": " ".join([c["setup"], *[p for p in [c.get("partitioner", "iid")] if p != "iid"]])}
             for c in cells]  # fmt: skip
    mean: dict[tuple[str, str, str], float] = {}
    for key in {(c["setup"], c["rule"], c["attack"]) for c in cells}:
        mean[key] = float(np.mean([c["final"] for c in cells if (c["setup"], c["rule"], c["attack"]) == key]))
    kinds = [k for k in ATTACKS if any(c["attack"] == k for c in cells)]
    rows = []
    order = {name: i for i, name in enumerate([*SETUPS, *RULES])}
    pairs = sorted(dict.fromkeys((c["setup"], c["rule"]) for c in cells),
                   key=lambda p: (order[p[0].split()[0]], p[0], order[p[1]]))  # fmt: skip
    for setup, rule in pairs:
        clean = mean.get((setup, "fedavg", "clean"))
        row: list[Any] = [setup, rule]
        for k in kinds:
            acc = mean.get((setup, rule, k))
            mark = ""
            if acc is None and same_as_evade(rule, k) and (setup, rule, "evade") in mean:
                acc, mark = mean[(setup, rule, "evade")], " = evade"
            if acc is None:
                row.append("")
            elif clean is None or (rule == "fedavg" and k == "clean"):
                row.append(f"{acc:.3f}{mark}")
            else:
                row.append(f"{acc:.3f} ({100 * (acc - clean):+.1f}){mark}")
        rows.append(row)
    return table(["setup", "rule", *kinds], rows)


if __name__ == "__main__":
    sys.exit(main())
