"""A quick recipe probe: FedAvg over the experiment's simulated sites in one process, no Flower.

Each site trains with Confide's own site code (``common.site.train_round``: the same data
partition, local training, DP-SGD with its ledger, augmentation, EMA); the probe averages the
sites' weights by record count and scores the global model on the central test set after every
round. It leaves out what Flower adds (transport, update checks, strategies other than FedAvg,
site sampling), so it is for choosing a recipe quickly, not a result: the tables in
docs/benchmarks.md come from the real simulation (benchmarks/strategies.py, simulations/study/sweep.py).

    python -m benchmarks.fedavg_probe simulations/configs/hospital_resnet_pneumonia.yaml \
        --set privacy.mode=local --set privacy.target_epsilon=8 --set train.augment=crop
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._util import RESULTS, machine
from common import config as config_mod
from common import logs
from common.data import LabelSet
from common.errors import ConfideError
from common.site import SiteSpec, site_runtime, train_round
from common.train import evaluate
from common.weights import get_weights, set_weights
from server.run import _central_loader, resolve_labels
from simulations.local import parse_sets


def probe(exp: config_mod.ExperimentConfig) -> dict:
    exp = resolve_labels(exp)
    labels = LabelSet(exp.data.labels)
    n_sites = exp.data.num_sites
    sites = [site_runtime(exp, SiteSpec(f"site-{i}", i, n_sites), labels) for i in range(n_sites)]
    test = _central_loader(exp, labels)
    assert test is not None, "the probe needs a central test set"
    glob = get_weights(sites[0].model)
    curve, rounds = [evaluate(sites[0].model, test, len(labels)).accuracy], []
    start = time.perf_counter()
    for rnd in range(1, exp.strategy.rounds + 1):
        updates, counts, metrics = [], [], []
        for rt in sites:
            set_weights(rt.model, glob, "probe")
            metrics.append(train_round(exp, rt, rnd, run_id="probe"))
            updates.append(get_weights(rt.model))
            counts.append(len(rt.train_set))
        w = np.asarray(counts, dtype=np.float64) / sum(counts)
        glob = {k: sum(wi * u[k].astype(np.float64) for wi, u in zip(w, updates)).astype(updates[0][k].dtype)
                for k in updates[0]}  # fmt: skip
        set_weights(sites[0].model, glob, "probe")
        curve.append(evaluate(sites[0].model, test, len(labels)).accuracy)
        rounds.append({"epsilon": max(m.get("epsilon", 0.0) for m in metrics),
                       "sigma": max(m.get("noise_multiplier", 0.0) for m in metrics)})  # fmt: skip
        print(f"round {rnd}: test acc {curve[-1]:.4f} {rounds[-1]} ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"curve": curve, "final": curve[-1], "best": max(curve[1:]), "rounds": rounds,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    logs.setup()
    torch.set_num_threads(1)
    try:
        overrides = parse_sets(args.set)
        with tempfile.TemporaryDirectory() as tmp:  # ledgers of this throw-away run
            exp = config_mod.load(args.config, {"output_dir": tmp, **overrides})
            result = {"machine": machine(), "config": args.config, "overrides": overrides, **probe(exp)}
    except ConfideError as exc:
        print(f"confide: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else RESULTS / f"fedavg-probe-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"final {result['final']:.4f} best {result['best']:.4f}; saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
