"""One sweep cell: simulate it, audit its final model, write its result last and atomically.

Layout and the meaning of "done": see cellstore.py. An unfinished attempt's run folders are
cleared before the cell runs again, so a cell's folder only ever holds the run its result
describes.

A parallel sweep (``--parallel``, on a Ray cluster) runs each cell in its own process,
``python -m simulations.study.cell --ray-address HOST:PORT``, which reads the sweep, the cell and the
output folder pickled on stdin: Flower's in-process simulation holds process-wide Ray state, so one
process is one Ray driver, one simulation at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from common import config as config_mod
from common import tracking as tracking_mod
from common.errors import ConfideError
from simulations.local import simulate
from simulations.run_summary import summarize_run
from simulations.study.cellstore import FAILED, RESULT, atomic_write, cell_dir, load_result, record_failure
from simulations.study.determinism import seeded_sites
from simulations.study.study_audit import audit_run
from simulations.study.sweep_spec import Cell, Sweep


def run_cell(sweep: Sweep, cell: Cell, out: Path, ray_address: str | None = None) -> dict[str, Any]:
    """Simulate the cell (on the Ray cluster at ``ray_address`` if given), audit its final model,
    write and return its result."""
    folder = cell_dir(out, cell.id)
    runs = folder / "runs"
    if runs.exists():
        shutil.rmtree(runs)  # an earlier attempt that did not finish
    (folder / FAILED).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    exp = tracked(config_mod.replace(cell.exp, output_dir=str(runs.resolve())), sweep, out)
    atomic_write(folder / "cell.yaml", yaml.safe_dump({"axes": cell.axes, "experiment": config_mod.to_dict(exp)}))
    mods = [seeded_sites(exp.seed)] if sweep.deterministic_sites else []
    start = time.perf_counter()
    run = simulate(exp, cpus_per_site=sweep.cpus_per_site, client_mods=mods, ray_address=ray_address)
    wall = time.perf_counter() - start
    summary = summarize_run(run)
    result = {
        "cell_id": cell.id,
        "axes": cell.axes,
        "config": config_mod.to_dict(config_mod.load(run / "config.yaml")),
        "run": str(run.relative_to(out.resolve())),
        "metrics": {**summary["metrics"], "wall_seconds": wall},
        "curve": summary["curve"],
        "site_accuracy": summary["site_accuracy"],
    }
    result = with_audit(result, audit_run(run, sweep.audit, out / "references"))
    atomic_write(folder / RESULT, json.dumps(result, indent=1))
    return result


def tracked(exp: config_mod.ExperimentConfig, sweep: Sweep, out: Path) -> config_mod.ExperimentConfig:
    """With ``tracking.mlflow`` on, every cell of the sweep is a run in one MLflow experiment (the
    sweep's name) in one store (``<out>/mlflow.db`` unless ``tracking.mlflow_uri`` names one)."""
    if not exp.tracking.mlflow:
        return exp
    return config_mod.replace(
        exp,
        **{
            "tracking.mlflow_uri": exp.tracking.mlflow_uri or tracking_mod.sqlite_uri(out / tracking_mod.DEFAULT_DB),
            "tracking.mlflow_experiment": exp.tracking.mlflow_experiment or sweep.name,
        },
    )


def reaudit_cell(sweep: Sweep, cell: Cell, out: Path) -> dict[str, Any] | None:
    """Redo a finished cell's audit from its saved run (no new simulation); None if not finished."""
    folder = cell_dir(out, cell.id)
    result = load_result(folder, cell.id)
    if result is None:
        return None
    result = with_audit(result, audit_run(out / result["run"], sweep.audit, out / "references"))
    atomic_write(folder / RESULT, json.dumps(result, indent=1))
    return result


def with_audit(result: dict[str, Any], audit: dict[str, Any]) -> dict[str, Any]:
    """The result with this audit's numbers as metrics (older ones replaced) and its notes."""
    mia = {k: v for k, v in audit.items() if k.startswith("mia_")}
    metrics = {k: v for k, v in result["metrics"].items() if not k.startswith("mia_")}
    return {**result, "metrics": {**metrics, **mia}, "audit_notes": {k: v for k, v in audit.items() if k not in mia}}


def main(argv: list[str] | None = None) -> int:
    """One cell in this process, attached to a Ray cluster (see the module docstring): exit 0 when
    its result is written, 2 with the reason in FAILED.txt (and on stderr) when it failed."""
    parser = argparse.ArgumentParser(description="Run one sweep cell (pickled on stdin); used by a parallel sweep.")
    parser.add_argument("--ray-address", required=True, metavar="HOST:PORT")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole sweep: leave at once (a cell is done only once its result is written)
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))
    sweep, cell, out = pickle.load(sys.stdin.buffer)
    from server.flower_runtime import setup_logging

    setup_logging()
    try:
        run_cell(sweep, cell, out, ray_address=args.ray_address)
    except ConfideError as exc:
        record_failure(cell_dir(out, cell.id), str(exc))
        print(f"confide-cell: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not bad input: the traceback goes to the cell's log
        traceback.print_exc()
        record_failure(cell_dir(out, cell.id), f"{type(exc).__name__}: {exc} (traceback in the cell's log)")
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no wait on threads Flower's simulation may leave behind
