"""In-process simulation: the same ServerApp and ClientApp as ``flwr run .``, started with
Flower's ``run_simulation`` (Ray backend) for a given experiment. Used by tests,
benchmarks and sweeps; ``flwr run .`` remains the user-facing way to run a job.

    python -m simulations.local simulations/configs/default.yaml --set train.lr=0.01
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from common import config as config_mod
from common import logs
from common.config import ExperimentConfig
from common.errors import ConfideError

log = logging.getLogger(__name__)


def simulate(exp: ExperimentConfig, cpus_per_site: float = 1.0, threads_per_site: int = 1) -> Path:
    """Run the experiment with ``data.num_sites`` simulated sites; return the run folder."""
    from flwr.simulation import run_simulation

    from client.app import create_client_app
    from server.app import create_server_app

    if exp.train.threads == 0 and threads_per_site:
        exp = config_mod.replace(exp, **{"train.threads": threads_per_site})
    before = _runs(exp)
    run_simulation(
        server_app=create_server_app(exp),
        client_app=create_client_app(exp),
        num_supernodes=exp.data.num_sites,
        backend_config={
            "client_resources": {"num_cpus": cpus_per_site, "num_gpus": 0.0},
            "init_args": {"logging_level": "ERROR", "log_to_driver": True},
        },
    )
    new = sorted(_runs(exp) - before)
    if not new:
        raise ConfideError(
            f"the simulation of '{exp.name}' ended without a complete run folder "
            f"in {config_mod.resolve_path(exp.output_dir)} (see the log above)"
        )
    return new[-1]


def _runs(exp: ExperimentConfig) -> set[Path]:
    base = config_mod.resolve_path(exp.output_dir)
    return {p for p in base.glob("*") if p.is_dir() and not p.name.endswith(".incomplete")} if base.exists() else set()


def parse_sets(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfideError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


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
    args = parser.parse_args(argv)
    logs.setup()
    try:
        exp = config_mod.load(args.experiment, parse_sets(args.set))
        path = simulate(exp, cpus_per_site=args.cpus_per_site)
    except ConfideError as exc:
        print(f"confide: {exc}", file=sys.stderr)
        return 2
    print(f"run folder: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
