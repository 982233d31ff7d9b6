"""Privacy-utility sweeps: run every cell of a sweep file as a simulation, then report.

    python -m simulations.sweep simulations/sweeps/pneumonia.yaml [--out DIR] [--set KEY=VALUE ...]
        [--grid 'KEY=[V1,V2]' ...] [--reaudit] [--no-report]

Each cell is one simulated federated run plus a membership-inference audit of its final model
(see sweep_spec.py for the file format, cell.py and cellstore.py for what a cell writes). Cells
whose result already exists are skipped, so rerunning the same command after an interruption
(Ctrl-C, a killed process) resumes the sweep. ``--set`` overrides a config key in every cell
(e.g. a reduced budget) and ``--grid`` replaces an axis's values; such cells get other ids than
the full-budget ones, so both can live in one output folder. ``--reaudit`` only redoes the audit
of finished cells from their saved run folders (after a change to the audit), without simulating
again. At the end the table, plots and HTML report are written (``python -m simulations.report
DIR`` redoes that alone).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from common import config as config_mod
from common import logs
from common.errors import ConfideError
from simulations.cell import reaudit_cell, run_cell
from simulations.cellstore import PLAN, atomic_write, cell_dir, load_result, record_failure
from simulations.local import parse_sets
from simulations.sweep_spec import Cell, Sweep, load_sweep


def run_sweep(
    sweep: Sweep, out: Path, command: str = "", report: bool = True, echo: Callable[[str], None] = print
) -> dict[str, int]:
    """Run every cell not done yet; returns counts of done, skipped and failed cells."""
    out.mkdir(parents=True, exist_ok=True)
    write_plan(sweep, out, command)
    todo = [c for c in sweep.cells if load_result(cell_dir(out, c.id), c.id) is None]
    todo_ids = {c.id for c in todo}
    n = len(sweep.cells)
    echo(f"[sweep] {sweep.name}: {n} cells, {n - len(todo)} already done, {len(todo)} to run -> {out}")
    durations: list[float] = []
    failed = 0
    for i, cell in enumerate(sweep.cells, 1):
        head = f"[sweep] cell {i}/{n} {cell.id} ({describe(cell)})"
        if cell.id not in todo_ids:
            echo(f"{head}: done earlier, skipped")
            continue
        echo(f"{head}: running")
        start = time.perf_counter()
        try:
            result = run_cell(sweep, cell, out)
        except ConfideError as exc:
            record_failure(cell_dir(out, cell.id), str(exc))
            failed += 1
            echo(f"{head}: FAILED: {exc}")
            continue
        except KeyboardInterrupt:
            echo(f"{head}: interrupted; finished cells are kept, rerun the same command to resume")
            raise
        finally:
            durations.append(time.perf_counter() - start)
        left = len(todo) - len(durations)
        eta = sum(durations) / len(durations) * left
        echo(f"{head}: done in {_hms(durations[-1])} | {_brief(result['metrics'])} | {left} left, ETA {_hms(eta)}")
    if report:
        from simulations.report import build_report

        path = build_report(out)
        echo(f"[sweep] report: {path}")
    return {"cells": n, "skipped": n - len(todo), "ran": len(todo) - failed, "failed": failed}


def reaudit_sweep(sweep: Sweep, out: Path, echo: Callable[[str], None] = print) -> int:
    """Redo the membership-inference audit of every finished cell from its saved run; returns how many."""
    done = 0
    for i, cell in enumerate(sweep.cells, 1):
        result = reaudit_cell(sweep, cell, out)
        if result is not None:
            done += 1
            echo(f"[sweep] cell {i}/{len(sweep.cells)} {cell.id}: re-audited | {_brief(result['metrics'])}")
    return done


def write_plan(sweep: Sweep, out: Path, command: str) -> None:
    """The expanded sweep (which cells make up this study), read back by the report."""
    plan: dict[str, Any] = {
        "name": sweep.name,
        "source": sweep.source,
        "command": command,
        "grid": {k: [_json_value(v) for v in vs] for k, vs in sweep.grid.items()},
        "fixed": sweep.fixed,
        "privacy_axis": sweep.privacy_axis,
        "settings": {**sweep.settings(), "cpus_per_site": sweep.cpus_per_site},
        "cells": [{"id": c.id, "axes": {k: _json_value(v) for k, v in c.axes.items()}} for c in sweep.cells],
    }
    atomic_write(out / PLAN, json.dumps(plan, indent=1))


def describe(cell: Cell) -> str:
    return ", ".join(f"{k}={_json_value(v)}" for k, v in cell.axes.items()) or "base"


def default_out(sweep: Sweep) -> Path:
    return config_mod.resolve_path(f"runs/sweeps/{sweep.name}")


def _brief(m: dict[str, Any]) -> str:
    parts = [f"acc {m['final_accuracy']:.4f}", f"worst site {m['final_worst_site_accuracy']:.4f}"]
    parts.append(f"eps {m['epsilon_spent']:.3g}")
    if "mia_loss_auc" in m:
        parts.append(f"MIA AUC {m['mia_loss_auc']:.3f}")
    return " | ".join(parts)


def _json_value(v: Any) -> Any:
    return "inf" if isinstance(v, float) and v == float("inf") else v


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _exit_now(code: int) -> NoReturn:
    """Leave at once: Flower's simulation threads would otherwise keep the process alive after
    an interrupt and start the next run. Ray's processes are stopped first."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # best effort on the way out
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _interrupted() -> NoReturn:
    print("confide-sweep: interrupted (Ctrl-C); rerun the same command to resume", file=sys.stderr)
    _exit_now(130)


def _on_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C: raise KeyboardInterrupt as usual, and leave anyway 3 s later if something swallowed
    it (seen: an interrupt landing in a logging lock during Ray's start-up is "ignored")."""
    timer = threading.Timer(3.0, _interrupted)
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep YAML file")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/sweeps/<name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override in every cell")
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY=[V1,V2]", help="replace a grid axis's values"
    )
    parser.add_argument(
        "--reaudit", action="store_true", help="only redo the audit of finished cells from their saved runs"
    )
    parser.add_argument("--no-report", action="store_true", help="skip the table, plots and HTML at the end")
    args = parser.parse_args(argv)
    logs.setup()
    try:
        sweep = load_sweep(args.sweep, parse_sets(args.set), parse_sets(args.grid))
        out = args.out or default_out(sweep)
        command = "python -m simulations.sweep " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        if args.reaudit:
            print(f"[sweep] {reaudit_sweep(sweep, out)} cell(s) re-audited: {out}")
            if not args.no_report:
                from simulations.report import build_report

                print(f"[sweep] report: {build_report(out)}")
            return 0
        signal.signal(signal.SIGINT, _on_interrupt)
        counts = run_sweep(sweep, out, command=command, report=not args.no_report)
    except ConfideError as exc:
        print(f"confide-sweep: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _interrupted()

    print(f"[sweep] {counts['ran']} ran, {counts['skipped']} skipped, {counts['failed']} failed: {out}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
