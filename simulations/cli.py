"""``confide``: one command with subcommands, beside the single-purpose ones it dispatches to.

    confide run simulations/configs/default.yaml --set train.lr=0.01   # = python -m simulations.local
    confide score runs/<run>/model test.csv --out predictions.csv       # = confide-score
    confide sweep simulations/sweeps/pneumonia.yaml                     # = python -m simulations.study.sweep
    confide report runs/sweeps/<name>                                   # = python -m simulations.study.report
    confide audit-log show /var/lib/confide/ledger/<site>.audit.jsonl   # = confide-site-audit
    confide check-ledger <ledger.json> --records <n>                    # = python -m common.privacy.governance.check
    confide submit . confide --run-config "..."   # = flwr run --stream, exits 1 unless the job completed
    confide site-status                           # = python -m client.site_status (at a site)
    confide plan <experiment> --records 900,1200  # = python -m client.plan (releases and writes nothing)

Each subcommand is the same code as the command on its right, with the same options
(``confide <subcommand> --help``); a deployed job still runs through ``flwr run`` (README).
A subcommand's module is imported only when it is called, so ``confide --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple


class Subcommand(NamedTuple):
    module: str  # has main(argv: list[str] | None) -> int
    summary: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "run": Subcommand("simulations.local", "run an experiment as a local multi-site simulation"),
    "score": Subcommand("simulations.score", "score a CSV/JSONL/NPZ file with an exported model"),
    "sweep": Subcommand("simulations.study.sweep", "run a privacy-utility sweep (resumable, one cell per run)"),
    "report": Subcommand("simulations.study.report", "rebuild a sweep's tables, plots and HTML report"),
    "audit-log": Subcommand("client.audit_log", "show a site's audit log of what it sent"),
    "check-ledger": Subcommand("common.privacy.governance.check", "recompute a privacy ledger's epsilon independently"),
    "submit": Subcommand("simulations.submit", "submit a job (flwr run --stream); exit 1 unless it completed"),
    "site-status": Subcommand("client.site_status", "a site's policy, privacy budget left and last messages sent"),
    "plan": Subcommand("client.plan", "plan a DP job: noise, epsilon by round, a verdict per site (writes nothing)"),
}


def _parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<13} {cmd.summary}" for name, cmd in SUBCOMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="confide",
        usage="confide <subcommand> [options]",
        description=f"Confide: federated fine-tuning with differential privacy.\n\nsubcommands:\n{listing}",
        epilog="confide <subcommand> --help shows that subcommand's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        _parser().print_help()
        return 2
    if argv[0] in ("-h", "--help"):
        _parser().print_help()
        return 0
    if argv[0] not in SUBCOMMANDS:
        known = ", ".join(SUBCOMMANDS)
        print(f"confide: unknown subcommand {argv[0]!r} (one of: {known}; confide --help)", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    try:
        module = importlib.import_module(SUBCOMMANDS[name].module)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith(("simulations", "client", "common", "server")):
            raise
        # The site image ships the site's tools only (no study or simulation code).
        print(f"confide: '{name}' is not part of this installation ({exc.name} is absent)", file=sys.stderr)
        return 2
    sys.argv[0] = f"confide {name}"  # argparse's prog: usage lines read "confide run ..."
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
