"""Privacy-utility sweeps: run every cell of a sweep file as a simulation, then report.

    python -m simulations.study.sweep simulations/sweeps/pneumonia.yaml [--out DIR] [--set KEY=VALUE ...]
        [--grid 'KEY=[V1,V2]' ...] [--reaudit] [--no-report] [--ray-address HOST:PORT [--parallel N]]

Each cell is one simulated federated run plus a membership-inference audit of its final model
(see sweep_spec.py for the file format, cell.py and cellstore.py for what a cell writes). Cells
whose result already exists are skipped, so rerunning the same command after an interruption
(Ctrl-C, a killed process) resumes the sweep. ``--set`` overrides a config key in every cell
(e.g. a reduced budget) and ``--grid`` replaces an axis's values; such cells get other ids than
the full-budget ones, so both can live in one output folder. ``--reaudit`` only redoes the audit
of finished cells from their saved run folders (after a change to the audit), without simulating
again. At the end the table, plots and HTML report are written (``python -m simulations.study.report
DIR`` redoes that alone).

``--ray-address`` (or ``RAY_ADDRESS``) runs every cell's simulation on that running Ray cluster
instead of a private Ray instance per cell; with ``--parallel N`` up to N cells run at once there,
each in its own process, as many as the cluster's CPUs hold (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from common import cli
from common import config as config_mod
from common.errors import ConfideError
from common.tracking import prepare_store
from simulations.local import parse_sets
from simulations.ray_cluster import RayCluster, probe_cluster, ray_address_from
from simulations.resources import local_cpus
from simulations.study.cell import reaudit_cell, run_cell, tracked
from simulations.study.cellstore import (
    CELL_LOG,
    FAILED,
    PLAN,
    atomic_write,
    cell_dir,
    failure_of,
    load_result,
    record_failure,
)
from simulations.study.sweep_spec import Cell, Sweep, load_sweep

REPO = Path(__file__).resolve().parents[2]


def run_sweep(
    sweep: Sweep,
    out: Path,
    command: str = "",
    report: bool = True,
    echo: Callable[[str], None] = print,
    ray_address: str | None = None,
    parallel: int = 1,
) -> dict[str, int]:
    """Run every cell not done yet; returns counts of done, skipped and failed cells. With a Ray
    cluster (``ray_address``, else $RAY_ADDRESS) every simulation attaches to it, and ``parallel``
    > 1 runs up to that many cells at once there (``_run_parallel``)."""
    if parallel < 1:
        raise ConfideError(f"--parallel must be >= 1; got {parallel}")
    address = ray_address_from(ray_address)
    if parallel > 1 and not address:
        raise ConfideError(
            "--parallel needs a Ray cluster for the cells to share: give --ray-address HOST:PORT or set "
            "RAY_ADDRESS (docs/cluster.md)"
        )
    cluster = probe_cluster(address) if address else None  # a wrong address stops the sweep before any cell
    _check_cpus(sweep.cpus_per_site, cluster)
    out.mkdir(parents=True, exist_ok=True)
    write_plan(sweep, out, command)
    todo = [c for c in sweep.cells if load_result(cell_dir(out, c.id), c.id) is None]
    todo_ids = {c.id for c in todo}
    if todo:  # the MLflow store and experiment exist before any cell (parallel ones) opens them
        prepare_store(tracked(todo[0].exp, sweep, out))
    n = len(sweep.cells)
    where = f" on the Ray cluster at {cluster.address} ({cluster.describe()})" if cluster else ""
    echo(f"[sweep] {sweep.name}: {n} cells, {n - len(todo)} already done, {len(todo)} to run -> {out}{where}")
    if cluster and parallel > 1:
        failed = _run_parallel(sweep, out, todo_ids, cluster, parallel, echo)
    else:
        failed = _run_sequential(sweep, out, todo_ids, cluster.address if cluster else None, echo)
    if report:
        from simulations.study.report import build_report

        path = build_report(out)
        echo(f"[sweep] report: {path}")
    return {"cells": n, "skipped": n - len(todo), "ran": len(todo) - failed, "failed": failed}


def _check_cpus(cpus: float, cluster: RayCluster | None) -> None:
    """The sweep's cpus_per_site against the machine (or the cluster's nodes) before any cell: a site
    no node can hold leaves Flower's actor pool empty and the cell waiting forever."""
    if cluster is not None:
        if cluster.slots(cpus) == 0:
            raise ConfideError(
                f"sweep key 'cpus_per_site' ({cpus:g}) is more than any node of the Ray cluster at {cluster.address} "
                f"has ({cluster.describe()}); lower it"
            )
        return
    have = local_cpus()
    if cpus > have:
        raise ConfideError(
            f"sweep key 'cpus_per_site' ({cpus:g}) is more than this machine's {have} CPUs; use at most {have}"
        )


def _run_sequential(
    sweep: Sweep, out: Path, todo_ids: set[str], ray_address: str | None, echo: Callable[[str], None]
) -> int:
    """The cells one after another in this process; returns how many failed."""
    n = len(sweep.cells)
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
            result = run_cell(sweep, cell, out, ray_address=ray_address)
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
        left = len(todo_ids) - len(durations)
        eta = sum(durations) / len(durations) * left
        echo(f"{head}: done in {_hms(durations[-1])} | {_brief(result['metrics'])} | {left} left, ETA {_hms(eta)}")
    return failed


@dataclass
class _Job:
    """A cell running in its own process (``python -m simulations.study.cell``)."""

    head: str
    cell: Cell
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    sites: int  # actors it holds on the cluster
    start: float


def _run_parallel(
    sweep: Sweep, out: Path, todo_ids: set[str], cluster: RayCluster, parallel: int, echo: Callable[[str], None]
) -> int:
    """Up to ``parallel`` cells at once, each a process attached to the cluster as its own Ray
    driver (Flower's in-process simulation holds process-wide Ray state); returns how many failed.

    Each site is one actor of ``cpus_per_site`` CPUs for the whole simulation, and an actor pool
    never exceeds the sites (``simulations.ray_cluster.attached``). A cell starts, in sweep order, only
    when its sites fit in the cluster's free slots beside the running cells', so cells never wait
    on each other's actors (which could deadlock); a cell larger than the cluster runs alone."""
    n = len(sweep.cells)
    slots = cluster.slots(sweep.cpus_per_site)
    if slots < 1:
        raise ConfideError(
            f"no node of the Ray cluster at {cluster.address} has {sweep.cpus_per_site:g} CPUs for one site "
            "(the sweep's cpus_per_site)"
        )
    queue: list[tuple[str, Cell]] = []
    for i, cell in enumerate(sweep.cells, 1):
        head = f"[sweep] cell {i}/{n} {cell.id} ({describe(cell)})"
        if cell.id in todo_ids:
            queue.append((head, cell))
        else:
            echo(f"{head}: done earlier, skipped")
    widest = max((min(c.exp.data.num_sites, slots) for _, c in queue), default=1)
    at_once = max(1, min(parallel, slots // widest))
    running: list[_Job] = []
    durations: list[float] = []
    failed = 0
    try:
        while queue or running:
            while queue and len(running) < parallel:
                head, cell = queue[0]
                sites = min(cell.exp.data.num_sites, slots)
                if running and sum(j.sites for j in running) + sites > slots:
                    break
                queue.pop(0)
                running.append(_start_cell(sweep, cell, out, cluster.address, head, sites))
                echo(f"{head}: running")
            time.sleep(0.5)
            for job in [j for j in running if j.proc.poll() is not None]:
                running.remove(job)
                job.log.close()
                durations.append(time.perf_counter() - job.start)
                result, reason = _outcome(job, out)
                if result is None:
                    failed += 1
                    echo(f"{job.head}: FAILED: {reason}")
                    continue
                left = len(queue) + len(running)
                mean = sum(durations) / len(durations)
                now = time.perf_counter()
                eta = mean * -(-len(queue) // at_once) + max([0.0, *(mean - (now - j.start) for j in running)])
                took = _hms(durations[-1])
                echo(f"{job.head}: done in {took} | {_brief(result['metrics'])} | {left} left, ETA {_hms(eta)}")
    except KeyboardInterrupt:
        echo("[sweep] interrupted; finished cells are kept, rerun the same command to resume")
        raise
    finally:
        _stop(running)
    return failed


def _start_cell(sweep: Sweep, cell: Cell, out: Path, address: str, head: str, sites: int) -> _Job:
    folder = cell_dir(out, cell.id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FAILED).unlink(missing_ok=True)  # a stale reason must not pass for this attempt's
    log = (folder / CELL_LOG).open("wb")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "simulations.study.cell", "--ray-address", address]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env)
    assert proc.stdin is not None
    try:
        proc.stdin.write(pickle.dumps((sweep, cell, out.resolve())))
        proc.stdin.close()
    except OSError:  # it died at once; _outcome reports its exit
        pass
    return _Job(head, cell, proc, log, sites, time.perf_counter())


def _outcome(job: _Job, out: Path) -> tuple[dict[str, Any] | None, str]:
    """The finished cell's result, or None and why not (recorded in FAILED.txt if the cell did not)."""
    folder = cell_dir(out, job.cell.id)
    result = load_result(folder, job.cell.id) if job.proc.returncode == 0 else None
    if result is not None:
        return result, ""
    reason = failure_of(folder)
    if reason is None:
        reason = f"its process exited with code {job.proc.returncode} without a result"
        record_failure(folder, reason)
    return None, f"{reason} (log: {folder / CELL_LOG})"


def _stop(jobs: list[_Job]) -> None:
    """End running cells (interrupt or error): SIGTERM, then SIGKILL what is left after 2 s. The
    cluster ends a driver's actors when it goes; its cell has no result and reruns next time."""
    for job in jobs:
        job.proc.terminate()
    deadline = time.monotonic() + 2.0
    for job in jobs:
        try:
            job.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            job.proc.kill()
            job.proc.wait()
        job.log.close()


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


def _output_folder(given: Path | None, sweep: Sweep) -> Path:
    """--out (or the default) when it is, or can be made, a folder: checked before any cell runs."""
    out = given or default_out(sweep)
    flag = "--out" if given else "the default output folder"
    if out.exists() and not out.is_dir():
        raise ConfideError(f"{flag} {out} is a file; a folder is expected")
    ancestor = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not ancestor.is_dir():
        raise ConfideError(f"{flag} {out}: {ancestor} is a file, so the folder cannot be made")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfideError(f"{flag} {out}: {ancestor} is not writable")
    return out


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


_EXITING = threading.Lock()  # one way out: the main thread's, or the timer's if that one hangs


def _exit_now(code: int, forced: bool = False) -> NoReturn:
    """Leave at once: Flower's simulation threads would otherwise keep the process alive after
    an interrupt and start the next run. From the main thread Ray is stopped first; ``forced``
    (the timer's thread, while the main thread may still be inside Ray) hands the processes to a
    detached reaper instead, since a Ray shutdown there makes Ray end the process with code 1."""
    if forced:
        from simulations.processes import reap_after_exit

        reap_after_exit()
    else:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception:  # best effort on the way out
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _interrupted(forced: bool = False) -> NoReturn:
    if not _EXITING.acquire(timeout=10 if forced else -1):
        os._exit(130)  # the main thread's exit hangs: leave without it
    print("confide-sweep: interrupted (Ctrl-C); rerun the same command to resume", file=sys.stderr)
    _exit_now(130, forced)


def _on_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C: raise KeyboardInterrupt as usual, and leave anyway 3 s later if something swallowed
    it (seen: an interrupt landing in a logging lock during Ray's start-up is "ignored")."""
    timer = threading.Timer(3.0, _interrupted, kwargs={"forced": True})
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(
        prog=cli.prog("python -m simulations.study.sweep"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    parser.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the cells on this running Ray cluster (its head's address, or 'auto') instead of a private "
        "Ray instance per cell; it is left running. Default: $RAY_ADDRESS if set (docs/cluster.md)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="with a Ray cluster: run up to N cells at once, each in its own process, as many as the "
        "cluster's CPUs hold (sites x cpus_per_site each)",
    )
    try:
        args = parser.parse_args(argv)
    except ConfideError as exc:
        return cli.refuse(exc)
    from server.flower_runtime import setup_logging

    setup_logging()
    try:
        sweep = load_sweep(args.sweep, parse_sets(args.set), parse_sets(args.grid))
        out = _output_folder(args.out, sweep)
        command = "python -m simulations.study.sweep " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        if args.reaudit:
            print(f"[sweep] {reaudit_sweep(sweep, out)} cell(s) re-audited: {out}")
            if not args.no_report:
                from simulations.study.report import build_report

                print(f"[sweep] report: {build_report(out)}")
            return 0
        signal.signal(signal.SIGINT, _on_interrupt)
        counts = run_sweep(
            sweep,
            out,
            command=command,
            report=not args.no_report,
            ray_address=args.ray_address,
            parallel=args.parallel,
        )
    except ConfideError as exc:
        return cli.refuse(exc)
    except KeyboardInterrupt:
        _interrupted()

    print(f"[sweep] {counts['ran']} ran, {counts['skipped']} skipped, {counts['failed']} failed: {out}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
