"""Compressed updates (the ``transport`` section): bytes per round and accuracy against float32.

For each task and each transport setting it runs one simulation (same seed, split, model and
rounds) and reports the mean bytes a site sends per round (``bytes_up``: what the coordinator
received, encoded), the bytes of the broadcast per site (``bytes_down_per_site``), both as a
factor below float32, and the final-round central test accuracy with its difference to float32.

Tasks: ``digits`` (the default image job: ResNet-18 on scikit-learn's digits, 3 IID sites);
``banking77-lora`` (the shipped BANKING77 job, all-MiniLM-L6-v2 with LoRA r=8; what travels is the
head and the adapters); ``banking77-full`` (the same with every weight trained and exchanged: no
LoRA, AdamW 1e-4 on the encoder, 5e-2 on the head); ``banking77-lora-r4`` (LoRA r=4: half the
adapter bytes, with int8 the ≥ 1,000× row). BANKING77 runs use a reduced budget: every
``--every``-th training query (all 77 intents) and ``--rounds`` rounds; the full test split.

    python -m benchmarks.compression --tasks digits,banking77-lora,banking77-full
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._util import RESULTS, machine, read_rounds, table
from common import config as config_mod
from server.flower_runtime import setup_logging
from simulations.local import simulate

REPO = Path(__file__).resolve().parents[1]
BANKING77 = REPO.parent / "shared" / "datasets" / "banking77" / "train.csv"
FLOAT32 = "float32"
SETTINGS: dict[str, dict[str, Any]] = {
    FLOAT32: {},
    "fp16": {"transport.quantize": "fp16"},
    "bf16": {"transport.quantize": "bf16"},
    "int8": {"transport.quantize": "int8"},
    "int8/256": {"transport.quantize": "int8", "transport.block_size": 256},
    "int8/256 + broadcast": {"transport.quantize": "int8", "transport.block_size": 256, "transport.broadcast": True},
    "int8 + top-10%": {"transport.quantize": "int8", "transport.topk": 0.1},
    "int8/256 + top-1%": {"transport.quantize": "int8", "transport.block_size": 256, "transport.topk": 0.01},
}
TASKS: dict[str, tuple[str | None, dict[str, Any], list[str]]] = {
    "digits": ("simulations/configs/default.yaml", {}, [s for s in SETTINGS if s != "int8/256"]),
    "banking77-lora": (
        "simulations/configs/bank_bert_banking77.yaml",
        # the LoRA recipe: adapters and head trained from round 1, AdamW 2e-3 (adapters), 5e-2 (head)
        {"train.head_only_rounds": 0, "train.optimizer": "adamw", "train.lr": 2e-3, "train.head_lr": 0.05},
        [FLOAT32, "int8", "int8 + top-10%", "int8/256 + broadcast"],
    ),
    "banking77-full": (
        "simulations/configs/bank_bert_banking77.yaml",
        {
            "model.lora_r": 0,
            "train.head_only_rounds": 0,
            "train.optimizer": "adamw",
            "train.lr": 1e-4,
            "train.head_lr": 0.05,
        },  # fmt: skip
        [FLOAT32, "int8", "int8 + top-10%"],
    ),
}
# The same LoRA job at rank 4: half the adapter bytes (the head is unchanged).
TASKS["banking77-lora-r4"] = (TASKS["banking77-lora"][0], {**TASKS["banking77-lora"][1], "model.lora_r": 4},
                              [FLOAT32, "int8", "int8/256"])  # fmt: skip


def subset(every: int) -> Path:
    """Every ``every``-th BANKING77 training query (the file is sorted by intent, so its first N
    records would hold a few intents only): all 77 intents at 1/``every`` of the records."""
    out = REPO / "runs" / "benchmarks" / f"banking77-train-every{every}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with BANKING77.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    with out.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([rows[0], *rows[1::every]])
    return out


def run_one(task: str, setting: str, budget: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
    path, task_overrides, _ = TASKS[task]
    overrides = {
        **task_overrides,
        **(budget if task.startswith("banking77") else {}),
        **SETTINGS[setting],
        **({"seed": seed} if seed is not None else {}),
        "output_dir": "runs/benchmarks",
        "name": f"compress-{task}-{setting.replace(' ', '').replace('/', 'b').replace('%', '').replace('+', '-')}",
    }
    exp = config_mod.load(REPO / path if path else None, overrides)
    start = time.perf_counter()
    run = simulate(exp, cpus_per_site=1.0, threads_per_site=1)
    rounds = read_rounds(run)[1:]
    ups = [s["train"]["bytes_up"] for r in rounds for s in r["sites"].values() if s.get("train")]
    return {
        "task": task,
        "setting": setting,
        "seed": exp.seed,
        "run": str(run),
        "seconds": round(time.perf_counter() - start, 1),
        "bytes_up": statistics.mean(ups),
        "bytes_down": statistics.mean(r["bytes_down_per_site"] for r in rounds),
        "accuracy": rounds[-1]["central"]["accuracy"],
        "curve": [r["central"]["accuracy"] for r in read_rounds(run)],
    }


def render(runs: list[dict[str, Any]]) -> str:
    """One row per task and setting; with several seeds, accuracy is their mean (each seed's after it)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["setting"]), []).append(r)

    def acc(rs: list[dict[str, Any]]) -> float:
        return statistics.mean(r["accuracy"] for r in rs)

    rows = []
    for (task, setting), rs in groups.items():
        base = groups.get((task, FLOAT32), rs)
        up, down = statistics.mean(r["bytes_up"] for r in rs), statistics.mean(r["bytes_down"] for r in rs)
        base_up, base_down = (
            statistics.mean(b["bytes_up"] for b in base),
            statistics.mean(b["bytes_down"] for b in base),
        )
        curve = (
            " ".join(f"{a:.3f}" for a in rs[0]["curve"])
            if len(rs) == 1
            else " ".join(f"{r['accuracy']:.3f}" for r in rs)
        )
        rows.append([
            task, setting, f"{up / 1e3:,.1f}", f"{base_up / up:.1f}×", f"{down / 1e3:,.1f}", f"{base_down / down:.1f}×",
            f"{acc(rs):.3f}", f"{100 * (acc(rs) - acc(base)):+.1f}", curve, str(len(rs)),
            f"{statistics.mean(r['seconds'] for r in rs):.0f} s",
        ])  # fmt: skip
    headers = ["task", "transport", "kB up / site / round", "fewer bytes up", "kB down / site / round",
               "fewer bytes down", "final test acc", "Δ points",
               "test accuracy by round (one seed) / final accuracy per seed", "seeds", "wall"]  # fmt: skip
    return table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="digits,banking77-lora,banking77-full")
    parser.add_argument("--settings", default="", help="only these transport settings (comma-separated names)")
    parser.add_argument("--every", type=int, default=10, help="BANKING77: train on every N-th training query")
    parser.add_argument("--rounds", type=int, default=2, help="BANKING77 rounds")
    parser.add_argument(
        "--seeds", default="", help="run each row with these seeds (comma-separated; default: the config's)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    budget = {"data.path": str(subset(args.every)), "strategy.rounds": args.rounds}
    result: dict[str, Any] = {"machine": machine(), "banking77_budget": budget, "runs": []}
    out = RESULTS / f"compression-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for task in args.tasks.split(","):
        for setting in [x for x in TASKS[task][2] if not args.settings or x in args.settings.split(",")]:
            for seed in [int(x) for x in args.seeds.split(",")] if args.seeds else [None]:
                result["runs"].append(run_one(task, setting, budget, seed))
                out.write_text(json.dumps(result, indent=2))  # after every run: a stopped benchmark keeps its rows
                print(render(result["runs"]), flush=True)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
