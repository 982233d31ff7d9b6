"""Secure aggregation's overhead: round wall time, bytes each site sends, and accuracy, SecAgg+ vs
plain FedAvg on the same experiment (in-process simulation, 5 sites, all sampled every round).

Bytes are what the sites' audit logs recorded before sending (client/audit_log.py): tensors plus
the bytes carried in config values, i.e. under SecAgg+ the public keys, the encrypted key shares,
the masked update and the unmasking shares, summed over the protocol's four messages per round.
Wall time is the coordinator's per-round time (metrics.jsonl ``wall_seconds``), rounds >= 2.

    python -m benchmarks.secagg                       # digits ResNet-8 and BANKING77 MiniLM (LoRA)
    python -m benchmarks.secagg --setups digits
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from benchmarks._util import read_rounds, save, table
from benchmarks.compression import subset
from common import config as config_mod
from common.config import resolve_path
from server.flower_runtime import setup_logging
from simulations.local import simulate

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77"
SETUPS = {
    "digits": (
        "simulations/configs/default.yaml",
        {"model.name": "resnet8", "train.lr": 0.05, "train.local_epochs": 5, "strategy.rounds": 3, "data.num_sites": 5},
    ),
    "banking77-lora": (
        # The shipped recipe (head trained, LoRA r=8 adapters in the payload) on every 5th training
        # query (all 77 intents; benchmarks/compression.py's subset), the full test split.
        "simulations/configs/bank_bert_banking77.yaml",
        {"strategy.rounds": 3, "data.test_path": str(BANKING77 / "test.csv")},
    ),
}


def _sent_per_round(run: Path, ledgers: Path) -> dict[int, float]:
    """Mean bytes one site sent per round (training messages, all protocol stages)."""
    per: dict[tuple[int, str], int] = defaultdict(int)
    job = str(json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["run_id"])
    for log in ledgers.rglob("*.audit.jsonl"):  # beside the sites' ledgers, every job's lines
        for line in log.read_text().splitlines():
            x = json.loads(line)
            if x["type"].startswith("train") and x["round"] is not None and str(x["job"]) == job:
                per[(int(x["round"]), x["site"])] += int(x["bytes"])
    rounds: dict[int, list[int]] = defaultdict(list)
    for (rnd, _), total in per.items():
        rounds[rnd].append(total)
    return {rnd: statistics.mean(v) for rnd, v in rounds.items()}


def run(setup: str, secure: bool) -> dict:
    path, overrides = SETUPS[setup]
    if setup.startswith("banking77"):
        overrides = {**overrides, "data.path": str(subset(5))}
    name = f"secagg-bench-{setup}-{'secure' if secure else 'plain'}"
    exp = config_mod.load(
        path,
        {
            **overrides,
            "name": name,
            "strategy.min_sites": 5,
            "strategy.fraction_evaluate": 0.0,
            "secagg.enabled": secure,
            "output_dir": f"runs/benchmarks/{name}",
            "privacy.ledger_dir": f"runs/benchmarks/{name}/ledgers",
            "train.threads": 1,
        },
    )
    folder = simulate(exp, cpus_per_site=0.4, threads_per_site=1)
    rounds = read_rounds(folder)
    steady = [r for r in rounds if r["round"] >= 2]
    sent = _sent_per_round(folder, resolve_path(exp.privacy.ledger_dir))
    return {
        "setup": setup,
        "aggregation": "SecAgg+" if secure else "plain FedAvg",
        "run": str(folder),
        "round_wall_s": statistics.mean(r["wall_seconds"] for r in steady),
        "slowest_site_train_s": statistics.mean(r["slowest_site_train_seconds"] for r in steady),
        "site_sent_bytes_per_round": statistics.mean(sent[r["round"]] for r in steady),
        "bytes_down_per_site": rounds[-1]["bytes_down_per_site"],
        "central_accuracy": rounds[-1]["central"].get("accuracy"),
        "rounds": exp.strategy.rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    args = parser.parse_args()
    setup_logging()
    results = []
    for setup in args.setups:
        if setup.startswith("banking77") and not (BANKING77 / "train.csv").is_file():
            print(f"skipping {setup}: {BANKING77} not found")
            continue
        for secure in (False, True):
            results.append(run(setup, secure))
            print(json.dumps(results[-1]), flush=True)
    headers = ["setup", "aggregation", "round wall s", "slowest site train s", "site sends B/round", "accuracy"]
    rows = [
        [
            r["setup"],
            r["aggregation"],
            r["round_wall_s"],
            r["slowest_site_train_s"],
            int(r["site_sent_bytes_per_round"]),
            r["central_accuracy"],
        ]
        for r in results
    ]
    print(table(headers, rows))
    print(f"saved {save('secagg', {'results': results})}")


if __name__ == "__main__":
    main()
