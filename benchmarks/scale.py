"""Scale: the real simulation (Flower's run_simulation, Ray backend) with 10 .. 10,000 sites,
10 of them sampled per round for training and for evaluation.

Every site count runs in its own process tree (a fresh Python process that calls
``simulations.local.simulate``); this script samples that tree (the driver, Ray's daemons and its
workers) every 0.2 s with psutil and reports the peak of the summed RSS (shared pages, such as
torch's libraries mapped by every worker, count once per process). Start-up is from process
start to the first round begun (the "[confide] round 0" line, the server's evaluation of the
initial model, printed just before round 1 is configured); round wall time is ``wall_seconds``
from the run's metrics.jsonl (round 1 includes building the sampled sites on cold workers).

Data: the generated 'synthetic_images' set (8x8 images, not real data), 50 records a site (the
first 50 x sites records, up to all 50,000: 5 a site at 10,000 sites), split IID with
flwr-datasets; ResNet-8; every site takes ``--steps`` local steps and evaluates its 10 held-out
records, so the work per round is the same at every site count.

    python -m benchmarks.scale                       # 10, 100, 1,000 sites, 3 rounds
    python -m benchmarks.scale --sites 10,100,1000,10000 --rounds 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._util import read_rounds, save, table

SAMPLED = 10  # sites per round (training and evaluation)
SAMPLE_EVERY_S = 0.2
PSS_EVERY = 5  # samples
RECORDS_PER_SITE = 50  # while the generated set lasts (50,000 records: 5 a site at 10,000 sites)
MAX_RECORDS = 50_000


def overrides(num_sites: int, rounds: int, steps: int) -> dict[str, Any]:
    fraction = min(1.0, SAMPLED / num_sites)
    return {
        "name": f"scale-{num_sites}",
        "output_dir": "runs/benchmarks",
        "model.name": "resnet8",
        "model.in_channels": 1,
        "data.source": "synthetic_images",
        "data.num_sites": num_sites,
        "data.partitioner": "iid",
        "data.max_samples": min(MAX_RECORDS, RECORDS_PER_SITE * num_sites),
        "train.local_epochs": 1,
        "train.max_steps": steps,
        "train.batch_size": 32,
        "train.threads": 1,
        "strategy.rounds": rounds,
        "strategy.fraction_train": fraction,
        "strategy.fraction_evaluate": fraction,
        "strategy.min_sites": min(SAMPLED, num_sites),
    }


def child(num_sites: int, rounds: int, steps: int) -> int:
    """One simulation in this process (the process tree the parent measures)."""
    from common import config as config_mod
    from server.flower_runtime import setup_logging
    from simulations.local import simulate

    setup_logging()
    path = simulate(config_mod.load(None, overrides(num_sites, rounds, steps)), cpus_per_site=1.0, threads_per_site=1)
    print(f"SCALE_RUN_FOLDER {path}", flush=True)
    return 0


def measure(num_sites: int, rounds: int, steps: int, log_dir: Path) -> dict[str, Any]:
    import psutil

    cmd = [sys.executable, "-m", "benchmarks.scale", "--child", str(num_sites), "--rounds", str(rounds)]
    cmd += ["--steps", str(steps)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    marks: dict[str, Any] = {}
    log_file = log_dir / f"scale-{num_sites}.log"

    def read() -> None:
        assert proc.stdout is not None
        with log_file.open("w") as out:
            for line in proc.stdout:
                out.write(line)
                if "[confide] round 0" in line and "first_round" not in marks:
                    marks["first_round"] = time.perf_counter() - started
                if line.startswith("SCALE_RUN_FOLDER "):
                    marks["run"] = line.split(" ", 1)[1].strip()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    root = psutil.Process(proc.pid)
    peak_total = peak_procs = peak_pss = 0
    per_process: dict[int, tuple[str, int]] = {}  # pid -> (name, its own peak RSS)
    for tick in itertools.count():
        if proc.poll() is not None:
            break
        sample = _tree_rss(root)
        peak_total, peak_procs = max(peak_total, sum(rss for _, rss in sample.values())), max(peak_procs, len(sample))
        for pid, (name, rss) in sample.items():
            per_process[pid] = (name, max(rss, per_process.get(pid, ("", 0))[1]))  # its latest name
        if tick % PSS_EVERY == 0:  # PSS reads /proc/<pid>/smaps_rollup: ~15 ms a process, so less often
            peak_pss = max(peak_pss, _tree_pss(root))
        time.sleep(SAMPLE_EVERY_S)
    reader.join(timeout=30)
    wall = time.perf_counter() - started
    if proc.returncode != 0 or "run" not in marks:
        raise SystemExit(f"{num_sites} sites: the simulation failed (exit {proc.returncode}); see {log_file}")
    lines = read_rounds(Path(marks["run"]))
    trained = [r for r in lines if r["round"] >= 1]
    return {
        "sites": num_sites,
        "rounds": len(trained),
        "records_per_site": overrides(num_sites, rounds, steps)["data.max_samples"] // num_sites,
        "sampled_per_round": statistics.mean(sum(1 for s in r["sites"].values() if s["train"]) for r in trained),
        "peak_rss_mb": peak_total / 2**20,
        "peak_pss_mb": peak_pss / 2**20,
        "peak_driver_rss_mb": per_process.get(proc.pid, ("", 0))[1] / 2**20,
        "peak_rss_mb_by_process": _by_name(per_process),
        "max_processes": peak_procs,
        "startup_s": marks.get("first_round"),
        "round_wall_s": statistics.mean(r["wall_seconds"] for r in trained),
        "first_round_wall_s": trained[0]["wall_seconds"],
        "later_round_wall_s": statistics.mean(r["wall_seconds"] for r in trained[1:]) if len(trained) > 1 else None,
        "total_wall_s": wall,
        "final_central_accuracy": (trained[-1].get("central") or {}).get("accuracy"),
        "run": marks["run"],
        "log": str(log_file),
    }


def _tree_rss(root: Any) -> dict[int, tuple[str, int]]:
    """pid -> (process name, RSS in bytes) for the process and all its descendants, now."""
    try:
        procs = [root, *root.children(recursive=True)]
    except Exception:  # the root ended
        return {}
    out = {}
    for p in procs:
        try:
            out[p.pid] = ("driver" if p.pid == root.pid else _label(p), int(p.memory_info().rss))
        except Exception:  # the process ended between listing and reading
            continue
    return out


def _label(p: Any) -> str:
    """What a process is: Ray's process title (ray::ClientAppActor, ray::IDLE, ...), else its script."""
    cmd = p.cmdline()
    first = cmd[0] if cmd else p.name()
    if first.startswith("ray::ClientApp"):  # the title is cut short while Ray renames it
        return "ray::ClientAppActor"
    if first.startswith("ray::"):
        return first.split()[0].split(".")[0]
    return next((Path(a).name for a in cmd[1:] if a.endswith(".py")), Path(first).name)


def _tree_pss(root: Any) -> int:
    """Summed proportional set size (shared pages divided among the processes mapping them)."""
    try:
        procs = [root, *root.children(recursive=True)]
    except Exception:
        return 0
    total = 0
    for p in procs:
        try:
            total += int(p.memory_full_info().pss)
        except Exception:
            continue
    return total


def _by_name(per_process: dict[int, tuple[str, int]]) -> dict[str, dict[str, float]]:
    """Each process name's count and summed own-peak RSS (MB), largest first."""
    groups: dict[str, list[int]] = {}
    for name, rss in per_process.values():
        groups.setdefault(name, []).append(rss)
    ranked = sorted(groups.items(), key=lambda kv: -sum(kv[1]))
    return {name: {"processes": len(v), "peak_rss_mb": round(sum(v) / 2**20, 1)} for name, v in ranked}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default="10,100,1000", help="comma-separated site counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="local steps per site and round (train.max_steps)")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.rounds, args.steps)
    from benchmarks._util import RESULTS

    RESULTS.mkdir(parents=True, exist_ok=True)
    results = []
    for n in (int(v) for v in args.sites.split(",")):
        result = measure(n, args.rounds, args.steps, RESULTS)
        print(json.dumps(result), flush=True)
        results.append(result)
    base = results[0]["peak_rss_mb"]
    rows = [
        [
            r["sites"],
            r["records_per_site"],
            r["sampled_per_round"],
            round(r["peak_rss_mb"]),
            round(r["peak_rss_mb"] / base, 3),
            round(r["peak_pss_mb"]),
            round(r["peak_driver_rss_mb"]),
            r["max_processes"],
            round(r["startup_s"], 1),
            round(r["round_wall_s"], 2),
            round(r["later_round_wall_s"], 2) if r["later_round_wall_s"] is not None else "-",
        ]
        for r in results
    ]
    headers = ["sites", "records/site", "sampled/round", "peak RSS MB (tree)", f"× {results[0]['sites']} sites"]
    headers += ["peak PSS MB", "driver RSS MB"]
    headers += ["processes", "start-up s", "round s (mean)", "round s (after 1st)"]
    print(table(headers, rows))
    path = save("scale", {"args": vars(args), "sample_every_s": SAMPLE_EVERY_S, "results": results})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
