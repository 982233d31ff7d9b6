"""In-process simulation: the same ServerApp and ClientApp as ``flwr run .``, started with
Flower's in-process simulation engine (Ray backend; server/flower_internals.py) for a given experiment. Used by tests,
benchmarks and sweeps; ``flwr run .`` remains the user-facing way to run a job.

    python -m simulations.local simulations/configs/default.yaml --set train.lr=0.01
    python -m simulations.local simulations/configs/default.yaml --ray-address HEAD_IP:6379
    python -m simulations.local simulations/configs/default.yaml --verbose   # Flower's and Ray's lines too

Ctrl-C stops the simulation; the run folder keeps its ``.incomplete`` name, says why in FAILED.txt
and can be continued with ``--resume``.

Without ``--ray-address`` (or ``RAY_ADDRESS``) each simulation starts a private Ray instance and
stops it at the end; with it, the simulation attaches to that running cluster and leaves it
running (docs/cluster.md, simulations/ray_cluster.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import NoReturn

from common import config as config_mod
from common import logs, stopping
from common.cli import parse_sets
from common.config import ExperimentConfig
from common.errors import ConfideError, RunFailed, exit_code
from common.rundir import INCOMPLETE, failure_of
from simulations.processes import reaped
from simulations.ray_cluster import attached, probe_cluster, ray_address_from
from simulations.resources import check_site_resources

log = logging.getLogger(__name__)


def simulate(
    exp: ExperimentConfig,
    cpus_per_site: float = 1.0,
    threads_per_site: int = 1,
    client_mods: list | None = None,
    gpus_per_site: float = 0.0,
    resume: Path | None = None,
    ray_address: str | None = None,
) -> Path:
    """Run the experiment with ``data.num_sites`` simulated sites; return the run folder.
    ``gpus_per_site``: each site's share of a GPU in Flower's simulation backend (e.g. 0.25 runs
    four sites at once per GPU); 0 keeps them on the CPU. ``resume``: a stopped run's folder
    (``<...>.incomplete``) to continue from its checkpoint instead of starting a new run.
    ``ray_address``: a running Ray cluster's HOST:PORT (or ``auto``) to attach to instead of
    starting a private Ray instance; ``RAY_ADDRESS`` when not given (see ``ray_address_from``)."""
    from client.app import create_client_app
    from server import flower_internals
    from server.app import create_server_app
    from server.run import preflight

    address = ray_address_from(ray_address)
    cluster = probe_cluster(address) if address else None  # a wrong address stops here, in seconds
    check_site_resources(cpus_per_site, gpus_per_site, cluster)
    exp = preflight(exp, resume)  # a bad data file, label or run folder stops here, before Ray starts

    if exp.train.threads == 0 and threads_per_site:
        exp = config_mod.replace(exp, **{"train.threads": threads_per_site})
    before = _runs(exp)
    # "local": a private instance even if a `ray start` on this machine left an address file
    # that a bare ray.init() would silently attach to.
    init_args = {"logging_level": "INFO" if logs.verbose() else "ERROR", "log_to_driver": True} | (
        {} if cluster else {"address": "local"}
    )
    warm = flower_internals.warm()
    if cluster is None and warm is not None:
        warm.disconnect()  # this simulation starts a private Ray: a kept cluster connection must not serve it
    with (
        reaped(shutdown_ray=cluster is None, spare=warm.kept_pids if warm is not None else None),
        attached(cluster, max_actors=exp.data.num_sites) if cluster else nullcontext(),
    ):
        flower_internals.run_in_process(
            server_app=create_server_app(exp, resume=resume),
            client_app=create_client_app(exp, mods=client_mods),
            num_supernodes=exp.data.num_sites,
            backend_config={
                "client_resources": {"num_cpus": cpus_per_site, "num_gpus": gpus_per_site},
                "init_args": init_args,
            },
        )
    new = sorted(_runs(exp) - before)
    if resume is not None:  # the resumed folder existed before: it is renamed when complete
        finished = resume.with_name(resume.name.removesuffix(INCOMPLETE))
        if finished.is_dir() and not resume.exists():
            return finished
        new = [resume]
    complete = [p for p in new if not p.name.endswith(INCOMPLETE)]
    if complete:
        return complete[-1]
    # Flower's in-process engine neither re-raises the ServerApp's exit nor always waits for
    # its thread to unwind: wait briefly for the reason the run folder records.
    deadline = time.monotonic() + 30
    while new and not any(map(failure_of, new)) and time.monotonic() < deadline:
        time.sleep(0.2)
    reasons = [r for r in map(failure_of, new) if r]
    raise RunFailed(
        reasons[-1]
        if reasons
        else f"the simulation of '{exp.name}' ended without a complete run folder in "
        f"{config_mod.resolve_path(exp.output_dir)} (see the log above)"
    )


def _runs(exp: ExperimentConfig) -> set[Path]:
    base = config_mod.resolve_path(exp.output_dir)
    return {p for p in base.iterdir() if (p / "config.yaml").is_file()} if base.exists() else set()


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signum)


def _stopped(signum: int) -> NoReturn:
    """Ctrl-C or SIGTERM: FAILED.txt in the run folder, this process's Ray processes ended
    (common/stopping.py), then exit at once: Flower's ServerApp thread would block a normal exit."""
    folders = stopping.stop(signum)
    hint = f"; continue it with --resume {folders[-1]}" if folders else ""
    print(f"confide: stopped by {signal.Signals(signum).name}{hint}", file=sys.stderr, flush=True)
    if not folders:
        stopping.end_descendants()
    sys.stdout.flush()
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="experiment YAML file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable), e.g. --set train.lr=0.01",
    )
    parser.add_argument("--cpus-per-site", type=float, default=1.0)
    parser.add_argument("--gpus-per-site", type=float, default=0.0, help="each site's GPU share (e.g. 0.25)")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_FOLDER",
        help="continue a stopped run (runs/<...>.incomplete) from its last checkpointed round; give the "
        "same experiment and --set overrides as the run it continues",
    )
    parser.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="attach to this running Ray cluster (its head's address, or 'auto') instead of starting a "
        "private Ray instance; it is left running. Default: $RAY_ADDRESS if set (docs/cluster.md)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=f"keep Flower's, Ray's and the libraries' own lines in the terminal (= {logs.VERBOSE_ENV}=1)",
    )
    args = parser.parse_args(argv)
    if args.verbose:  # in the environment: Ray's workers, started later, inherit it
        os.environ[logs.VERBOSE_ENV] = "1"
    from server.flower_runtime import setup_logging  # flwr is imported once a run starts

    setup_logging()
    signal.signal(signal.SIGTERM, _interrupt)  # kill: stop as Ctrl-C does
    try:
        exp = config_mod.load(args.experiment, parse_sets(args.set))
        path = simulate(
            exp,
            cpus_per_site=args.cpus_per_site,
            gpus_per_site=args.gpus_per_site,
            resume=args.resume,
            ray_address=args.ray_address,
        )
    except ConfideError as exc:
        print(f"confide: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt as exc:
        _stopped(exc.args[0] if exc.args else signal.SIGINT)
    print(f"run folder: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
