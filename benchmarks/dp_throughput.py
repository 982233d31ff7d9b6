"""DP-SGD step throughput and peak memory, side by side in one run (CPU or GPU).

Setups (the issue's): MiniLM (all-MiniLM-L6-v2) at sequence length 64, batch 32; ResNet-18
(28x28 grayscale, small-input stem) at batch 64. Variants per model:

- ``plain``: non-private training as Confide runs it (``common.train.train``); for ResNet-18
  both the stock BatchNorm model and the GroupNorm variant DP needs (``plain-gn``);
- ``hooks`` / ``ghost`` / ``bookkeeping``: Confide's DP-SGD round (``common.privacy.governance.dpsgd.train_private``)
  with Opacus's per-sample-gradient hooks, Opacus's ghost (fast gradient) clipping, or Confide's
  one-pass book-keeping clipping (``common/privacy/mechanism/bookkeeping.py``, the default where supported).
  As in every DP round, a Poisson batch larger than the batch size runs as two passes of one DP
  step; ``bookkeeping-unsplit`` runs every Poisson batch in one pass, whatever its size;
- ``lora`` / ``lora-ghost`` / ``lora-bookkeeping``: MiniLM with LoRA r=8 on query/value
  (adapters + head trained), without and with DP.

Each variant runs in its own fresh process (so peak RSS is its own), first a warm-up round of
``--warmup`` steps and then a measured round of ``--steps`` steps on the same model. Throughput
= samples processed / seconds of the measured round (for DP rounds: Poisson-sampled batches,
expected size = batch size; the DP round's Opacus setup is inside the measured time, as it is
in every real round). Variants are interleaved across ``--repeats`` and the median is kept, so
background load affects all variants alike; samples per CPU-second (process CPU time) is also
reported, which is the steadier figure when the machine is shared (use ``--threads 1`` then).
Memory: the process's peak RSS, and the peak above the RSS measured just before training (model,
data and libraries loaded): the training working set; both are the largest over the repeats.
Each run records its training batch sizes: Poisson sampling draws DP batches around the expected
size, and the largest batch of a run sets its activation memory, while plain batches are fixed.

Inputs are real records where ``../shared/datasets`` has them (BANKING77 queries joined to fill
64 tokens; PneumoniaMNIST images), else the built-in offline sets; the JSON records which.

    python -m benchmarks.dp_throughput                    # all variants, both models
    python -m benchmarks.dp_throughput --models resnet18 --repeats 1

Regression guard (run before any change to common/privacy/ lands): ``--check`` runs the variants
named in benchmarks/dp_throughput_thresholds.json with their plain baselines (median of
``--repeats``) and fails, naming each, when a ratio against plain crosses its threshold;
``--check --result FILE`` checks a saved run instead; ``--markdown --result FILE`` prints the docs
table of a saved run.

    python -m benchmarks.dp_throughput --check --repeats 3 --steps 4 --warmup 1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks._util import save, table
from benchmarks.dp_throughput_check import THRESHOLDS, CheckInputError, load_rows, load_thresholds, markdown, violations

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
VARIANTS = {
    "minilm": ["plain", "hooks", "ghost", "bookkeeping", "lora", "lora-ghost", "lora-bookkeeping"],
    "resnet18": ["plain", "plain-gn", "hooks", "ghost", "bookkeeping", "bookkeeping-unsplit"],
}
DP_MODES = {"hooks": "hooks", "ghost": "ghost", "bookkeeping": "bookkeeping", "bookkeeping-unsplit": "bookkeeping"}
BASELINE = {"minilm": "plain", "resnet18": "plain"}


# --------------------------------------------------------------------------- one variant (child)


def _experiment(model: str, variant: str):
    from common import config as config_mod

    if model == "minilm":
        real = (SHARED / "banking77" / "train.csv").exists()
        overrides: dict[str, Any] = {"model.name": "bert", "model.max_length": 64, "train.batch_size": 32}
        overrides |= (
            {"data.source": "csv", "data.path": str(SHARED / "banking77" / "train.csv"), "data.label_field": "category"}
            if real
            else {"data.source": "synthetic_text"}
        )
        if variant.startswith("lora"):
            overrides["model.lora_r"] = 8
    else:
        real = (SHARED / "pneumoniamnist" / "pneumoniamnist.npz").exists()
        overrides = {"model.name": "resnet18", "model.in_channels": 1, "model.small_input": True}
        overrides |= {"train.batch_size": 64}
        overrides |= (
            {"data.source": "npz", "data.path": str(SHARED / "pneumoniamnist" / "pneumoniamnist.npz")}
            if real
            else {"data.source": "digits"}
        )
        if variant == "plain-gn":
            overrides["model.norm"] = "group"
    mode = DP_MODES.get(variant.removeprefix("lora-"))
    if mode:
        overrides |= {
            "privacy.mode": "local",
            "privacy.noise_multiplier": 1.0,
            "privacy.max_grad_norm": 1.0,
            "privacy.grad_sample_mode": mode,
        }
        if variant.endswith("-unsplit"):  # no Poisson batch of these runs comes near it
            overrides["privacy.max_physical_batch_size"] = 1_000_000
    overrides |= {"data.max_samples": 2048, "train.lr": 1e-4}
    return config_mod.load(None, overrides), real


def _records(exp, model: str):
    """Labelled records; for text, consecutive queries joined so every sample fills max_length."""
    from common.data import RawData, label_set, read_train

    unl = read_train(exp.data)
    raw = unl.with_labels(label_set(exp.data, unl), exp.data.path or exp.data.source)
    if model == "minilm":
        texts = raw.texts or ()
        joined = tuple(" ".join(texts[i : i + 12]) for i in range(len(texts)))
        raw = RawData(labels=raw.labels, texts=joined)
    return raw


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_one(model: str, variant: str, warmup: int, steps: int, threads: int) -> dict[str, Any]:
    from common.batches import make_dataset, make_loader
    from common.models import build_model
    from common.privacy.governance.dpsgd import train_private
    from common.privacy.governance.ledger import Ledger
    from common.privacy.governance.policy import SIMULATION
    from common.train import train

    torch.set_num_threads(threads)
    exp, real = _experiment(model, variant)
    raw = _records(exp, model)
    net = build_model(exp, int(raw.labels.max()) + 1)
    dataset = make_dataset(raw, exp.model)
    first = dataset[0][0]
    seq = len(first) if isinstance(first, list) else tuple(first.shape)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    base_rss = _rss_mib()
    batches: list[int] = []  # every training forward's batch size (DP: Poisson-sampled)

    def count(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if module.training and torch.is_grad_enabled():
            first = next(iter(kwargs.values()), None) if not args else args[0]
            batches.append(int(first.shape[0]) if isinstance(first, torch.Tensor) else -1)

    net.register_forward_pre_hook(count, with_kwargs=True)
    results, cpu = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for n_steps in (warmup, steps):
            cpu = time.process_time()
            cfg = replace(exp.train, max_steps=n_steps)
            if exp.privacy.local:
                ledger = Ledger.open(Path(tmp) / "ledger.json")
                result, _ = train_private(
                    net, dataset, cfg, exp.privacy, rounds=1, ledger=ledger, policy=SIMULATION,
                    site="bench", run="bench", server_round=len(results) + 1,
                )  # fmt: skip
            else:
                result = train(net, make_loader(dataset, cfg.batch_size, shuffle=True), cfg)
            cpu = time.process_time() - cpu
            results.append(result)
    measured = results[-1]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": model,
        "variant": variant,
        "real_data": real,
        "input": seq,
        "batch_size": exp.train.batch_size,
        "trainable_parameters": trainable,
        "steps": measured.steps,
        "samples": measured.num_examples,
        "seconds": measured.seconds,
        "samples_per_s": measured.num_examples / measured.seconds,
        "samples_per_cpu_s": measured.num_examples / cpu,
        "peak_rss_mib": peak,
        "train_mem_mib": peak - base_rss,
        "batch_sizes": batches,  # warm-up and measured rounds: peak memory follows the largest
        "threads": threads,
    }


# --------------------------------------------------------------------------- driver (parent)


def _run_child(model: str, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.dp_throughput", "--one", f"{model}:{variant}"]
    cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{model}:{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for model, variants in VARIANTS.items():
        for variant in variants:
            mine = [r for r in runs if r["model"] == model and r["variant"] == variant]
            if not mine:
                continue
            row = dict(mine[0])
            row["samples_per_s"] = statistics.median(r["samples_per_s"] for r in mine)
            row["samples_per_cpu_s"] = statistics.median(r["samples_per_cpu_s"] for r in mine)
            row["samples_per_s_all"] = [round(r["samples_per_s"], 2) for r in mine]
            row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in mine)
            row["train_mem_mib"] = max(r["train_mem_mib"] for r in mine)
            row["largest_batch"] = max((max(r.get("batch_sizes") or [0]) for r in mine), default=0)
            rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["model"] == row["model"] and r["variant"] == BASELINE[row["model"]]), None)
        if base:
            row["speed_vs_plain"] = row["samples_per_s"] / base["samples_per_s"]
            row["cpu_speed_vs_plain"] = row["samples_per_cpu_s"] / base["samples_per_cpu_s"]
            row["peak_vs_plain"] = row["peak_rss_mib"] / base["peak_rss_mib"]
            row["train_mem_vs_plain"] = row["train_mem_mib"] / max(base["train_mem_mib"], 1.0)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--variants", nargs="+", help="only these variants (default: all of each model)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--check", action="store_true", help="fail when a ratio crosses its threshold")
    parser.add_argument("--thresholds", type=Path, default=THRESHOLDS, help="thresholds JSON for --check")
    parser.add_argument("--result", type=Path, help="with --check or --markdown: a saved run instead of a fresh one")
    parser.add_argument("--markdown", action="store_true", help="print the docs table of --result")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        model, variant = args.one.split(":")
        print(json.dumps(measure_one(model, variant, args.warmup, args.steps, args.threads)))
        return
    try:
        if args.markdown or args.result:
            if not args.result:
                raise CheckInputError("--markdown needs --result FILE (a saved dp_throughput run)")
            if not (args.check or args.markdown):
                raise CheckInputError("--result FILE goes with --check or --markdown")
            rows = load_rows(args.result)
            if args.markdown:
                print(markdown(rows))
            if args.check:
                check(rows, args.thresholds, str(args.result))
            return
        if args.check:
            limits, _ = load_thresholds(args.thresholds)
            args.models = sorted({m for m, _ in limits} & set(VARIANTS), key=list(VARIANTS).index)
            args.variants = sorted({v for _, v in limits} | {BASELINE[m] for m in args.models})
        path = run(args)
        if args.check:
            check(load_rows(path), args.thresholds, str(path))
    except CheckInputError as e:
        raise SystemExit(str(e)) from None


def check(rows: list[dict[str, Any]], thresholds: Path, source: str) -> None:
    limits, _ = load_thresholds(thresholds)
    crossed = violations(rows, limits)
    for line in crossed:
        print(f"THRESHOLD CROSSED {line}")
    if crossed:
        raise SystemExit(f"dp_throughput check failed: {len(crossed)} threshold(s) crossed in {source} ({thresholds})")
    print(f"dp_throughput check passed: {source} within {thresholds}")


def run(args: argparse.Namespace) -> Path:
    runs, load_before = [], os.getloadavg()
    for rep in range(args.repeats):
        for model in args.models:
            for variant in VARIANTS[model]:
                if args.variants and variant not in args.variants:
                    continue
                r = _run_child(model, variant, args)

                print(f"[{rep + 1}/{args.repeats}] {model:8s} {variant:10s} {r['samples_per_s']:7.1f} samples/s "
                      f"peak {r['peak_rss_mib']:6.0f} MiB", flush=True)  # fmt: skip
                runs.append(r)
    rows = summarize(runs)
    headers = ["model", "variant", "samples/s", "x plain", "samples/CPU-s", "x plain", "peak RSS MiB", "x plain",
               "train mem MiB", "x plain"]  # fmt: skip
    body = [
        [r["model"], r["variant"], r["samples_per_s"], r.get("speed_vs_plain", float("nan")), r["samples_per_cpu_s"],
         r.get("cpu_speed_vs_plain", float("nan")), r["peak_rss_mib"],
         r.get("peak_vs_plain", float("nan")), r["train_mem_mib"], r.get("train_mem_vs_plain", float("nan"))]
        for r in rows
    ]  # fmt: skip
    print(table(headers, body))
    args_record = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "one"}
    args_record["allocator"] = os.environ.get("LD_PRELOAD", "") or "glibc malloc (default)"
    args_record["load_average"] = {"before": load_before, "after": os.getloadavg()}  # 1, 5, 15 min
    args_record["niceness"] = os.nice(0)
    path = save("dp_throughput", {"args": args_record, "rows": rows, "runs": runs})
    print("saved", path)
    return path


if __name__ == "__main__":
    main()
