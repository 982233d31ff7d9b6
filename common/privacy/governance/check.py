"""Check a privacy ledger's epsilon independently: ``python -m common.privacy.governance.check LEDGER``.

For a privacy officer. Prints, for a site's ledger (or one site of the coordinator's central
ledger, ``--site``):
- the entries (committed and reserved: a reserved entry counts as spent);
- epsilon at the given delta composed by Opacus with the job's own accountant (rdp or prv, as the
  ledger's entries record it; else the ``--config``'s, else rdp; ``--accountant`` overrides), and by
  Google's ``dp_accounting`` (an independent implementation: RDP, and PLD for comparison), where
  that package is installed (``pip install dp-accounting``);
- with ``--config <run>/config.yaml --records N``: the DP-SGD history rebuilt from the job's
  configuration alone (noise multiplier as configured or calibrated, sample rate 1/ceil(N/B),
  steps per round), compared entry by entry with what the ledger recorded for ``--run``;
- with ``--run-folder <run>``: every round the run's metrics.jsonl says the site trained must be in
  the ledger under the run's job (a ledger that restarted, e.g. a run resumed against another
  ledger, misses rounds and is reported).
The accountants' own numerical warnings are folded into one ``note:`` line. Exit status 1 if the
rebuilt history or the run folder and the ledger disagree; 2, with one ``confide: ...`` line, for a
bad argument or file (every one is checked before anything is computed).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import cli
from common import config as config_mod
from common.errors import ConfideError
from common.privacy.governance.ledger import _entry_problem as entry_problem
from common.privacy.governance.ledger import _reject_constant, history_of
from common.privacy.mechanism.accounting import HistoryEntry, calibrate, default_delta, epsilon
from common.privacy.mechanism.accounting_notes import folded_note, quiet_accountants

ACCOUNTANTS = ("rdp", "prv")


def independent_epsilon(history: list[HistoryEntry], delta: float, kind: str = "rdp") -> float | None:
    """Epsilon by Google's dp_accounting (None where it is not installed)."""
    try:
        import dp_accounting
        from dp_accounting.pld import pld_privacy_accountant
        from dp_accounting.rdp import rdp_privacy_accountant
    except ImportError:
        return None
    acc = pld_privacy_accountant.PLDAccountant() if kind == "pld" else rdp_privacy_accountant.RdpAccountant()
    for sigma, q, steps in history:
        event = dp_accounting.GaussianDpEvent(sigma)
        if q < 1:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        acc.compose(event, int(steps))
    return float(acc.get_epsilon(delta))


def rebuilt_history(exp: config_mod.ExperimentConfig, records: int) -> HistoryEntry:
    """One round's (sigma, q, steps) from the configuration alone, by this tool's own arithmetic
    (not Confide's planner): Opacus's Poisson loader samples at rate 1/ceil(n/B) and yields
    int(1 / rate) batches per epoch (one fewer for some sizes, in floating point), recording rate
    1/batches; sigma is the configured one or Opacus's calibration for the whole job."""
    p, t = exp.privacy, exp.train
    batches = int(1 / (1 / math.ceil(records / t.batch_size)))
    steps = t.local_epochs * batches
    if t.max_steps:
        steps = min(steps, t.max_steps)
    q = 1.0 / batches
    delta = p.delta or default_delta(records)
    sigma = (
        calibrate(p.target_epsilon, delta, q, exp.strategy.rounds * steps, p.accountant)
        if p.target_epsilon is not None
        else p.noise_multiplier
    )
    return (sigma, q, steps)


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser(prog=cli.prog("python -m common.privacy.governance.check"), description=__doc__.splitlines()[0])
    ap.add_argument("ledger", type=Path)
    ap.add_argument("--delta", type=float, default=None, help="delta, 0 < delta < 1 (default: min(1e-5, 1/(10 n)) "
                    "with --records)")  # fmt: skip
    ap.add_argument(
        "--records", type=int, default=None, help="n >= 1: the site's training records (or number of sites)"
    )
    ap.add_argument("--accountant", choices=ACCOUNTANTS, default=None,
                    help="rdp or prv (default: the one the ledger's entries record, else rdp)")  # fmt: skip
    ap.add_argument("--site", default="", help="one site's entries of a central (coordinator) ledger")
    ap.add_argument("--config", type=Path, default=None, help="a run's config.yaml: rebuild its DP-SGD history")
    ap.add_argument("--run", default="", help="the run id whose entries --config is compared with")
    ap.add_argument(
        "--run-folder", type=Path, default=None, help="a run folder whose trained rounds must be in the ledger"
    )
    try:
        args = ap.parse_args(argv)
        inputs = _inputs(args)
        return _check(args, inputs)
    except ConfideError as exc:
        return cli.refuse(exc)


@dataclass(frozen=True)
class Inputs:
    """Everything the check reads, read and checked before any epsilon is computed."""

    entries: list[dict[str, Any]]
    delta: float
    accountant: str
    accountant_source: str  # why this accountant: the flag, the ledger, the config, or the default
    exp: config_mod.ExperimentConfig | None


def _inputs(args: argparse.Namespace) -> Inputs:
    if args.delta is not None and not 0 < args.delta < 1:
        raise ConfideError(f"--delta {args.delta:g} is out of range: 0 < delta < 1")
    if args.records is not None and args.records < 1:
        raise ConfideError(f"--records {args.records} is out of range: records >= 1")
    if args.delta is None and args.records is None:
        raise ConfideError(
            "give --delta (0 < delta < 1), or --records (>= 1) for the default delta min(1e-5, 1/(10 n))"
        )
    delta = args.delta if args.delta is not None else default_delta(args.records)
    if args.records is not None and delta >= 1 / args.records:
        raise ConfideError(f"--delta {delta:g} is out of range for --records {args.records}: "
                           f"0 < delta < 1/records = {1 / args.records:g}")  # fmt: skip
    if args.run and args.config is None:
        raise ConfideError(f"--run {args.run!r} needs --config (the run's config.yaml)")
    if args.config is not None and args.records is None:
        raise ConfideError("--config needs --records (the site's training records, >= 1)")
    entries = read_entries(args.ledger)
    if args.site:
        sites = sorted({str(e["site"]) for e in entries if "site" in e})
        entries = [e for e in entries if e.get("site") == args.site]
        cli.require(bool(entries), f"--site {args.site!r}: no entry of {args.ledger} is for that site "
                    f"(sites in it: {', '.join(sites) or 'none named'})")  # fmt: skip
    if args.run:
        runs = sorted({str(e.get("run")) for e in entries if e.get("kind", "dpsgd") == "dpsgd"})
        if args.run not in runs:
            raise ConfideError(f"--run {args.run!r}: no DP-SGD entry of {args.ledger} is for that run "
                               f"(runs in it: {', '.join(runs) or 'none'})")  # fmt: skip
    exp = None
    if args.config is not None:
        cli.existing_file(args.config, "--config")
        exp = config_mod.load(args.config)
    if args.run_folder is not None:
        cli.existing_folder(args.run_folder, "--run-folder")
        run_lines(args.run_folder)
    accountant, source = _accountant(args.ledger, args.accountant, entries, exp)
    return Inputs(entries, delta, accountant, source, exp)


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The ledger's entries, each checked as the sites check them; a bad file names what is wrong."""
    cli.existing_file(path, "ledger")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfideError(f"ledger {path} is unreadable ({exc})") from None
    if not text.strip():
        raise ConfideError(f'ledger {path} is empty; a ledger is a JSON object {{"entries": [...]}}')
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ConfideError(f"ledger {path} is not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ConfideError(f'ledger {path} is not a privacy ledger: expected a JSON object {{"entries": [...]}}')
    for i, e in enumerate(data["entries"]):
        if problem := entry_problem(e):
            raise ConfideError(f"ledger {path}: entry {i} {problem}")
    return data["entries"]


def _accountant(
    ledger: Path, flag: str | None, entries: list[dict[str, Any]], exp: config_mod.ExperimentConfig | None
) -> tuple[str, str]:
    """The accountant to report with: the flag, else the one the ledger's entries record (the job's
    own), else the config's ``privacy.accountant``, else rdp (Confide's default)."""
    recorded = sorted({str(e["accountant"]) for e in entries if e.get("accountant")})
    unknown = [a for a in recorded if a not in ACCOUNTANTS]
    if unknown:
        raise ConfideError(
            f"ledger {ledger}: its entries record an unknown accountant {unknown[0]!r} (known: rdp, prv)"
        )
    if flag:
        return flag, "chosen with --accountant"
    if len(recorded) > 1:
        raise ConfideError(f"ledger {ledger}: its entries record several accountants ({', '.join(recorded)}); "
                           "choose one with --accountant rdp|prv")  # fmt: skip
    if recorded:
        return recorded[0], "the one the ledger's entries record"
    if exp is not None:
        return exp.privacy.accountant, "the --config's privacy.accountant; the ledger records none"
    return "rdp", "the ledger records none: Confide's default"


def _check(args: argparse.Namespace, inp: Inputs) -> int:
    entries, delta = inp.entries, inp.delta
    history = history_of(entries)
    reserved = sum(e.get("status") == "reserved" for e in entries)
    print(f"ledger {args.ledger}: {len(entries)} entries ({reserved} reserved, counted as spent)")
    for kind in sorted({str(e.get("kind", "dpsgd")) for e in entries}):
        rows = [e for e in entries if str(e.get("kind", "dpsgd")) == kind]
        print(f"  {kind}: {len(rows)} entries, {sum(int(e['steps']) for e in rows)} steps")
    print(f"accountant: {inp.accountant} ({inp.accountant_source})")
    with quiet_accountants() as folded:
        eps = epsilon(history, delta, inp.accountant, args.records)
        print(f"epsilon (Opacus {inp.accountant}) at delta={delta:.3g}: {eps:.4f}")
        for kind in ("rdp", "pld"):
            other = independent_epsilon(history, delta, kind)
            print(f"epsilon (dp_accounting {kind}, independent): "
                  + ("not installed" if other is None else f"{other:.4f}"))  # fmt: skip
    if folded:
        print(folded_note(folded))
    site = args.site or _stem(args.ledger)
    missing = [] if args.run_folder is None else _check_run_folder(args.run_folder, entries, site)
    if inp.exp is None:
        return cli.FAILED if missing else 0
    with quiet_accountants():  # a calibration's notes are about the job's plan, not this ledger
        expected = rebuilt_history(inp.exp, args.records)
    mine = [e for e in entries if e.get("kind", "dpsgd") == "dpsgd" and (not args.run or e.get("run") == args.run)]
    bad = [e for e in mine if not _same(history_of([e])[0], expected)]
    print(f"rebuilt from {args.config}: noise {expected[0]:.6g}, sample rate {expected[1]:.6g}, steps {expected[2]} "
          f"per round; {len(mine) - len(bad)} of {len(mine)} ledger rounds match")  # fmt: skip
    for e in bad:
        print(f"  MISMATCH round {e.get('round')}: {history_of([e])[0]}")
    return cli.FAILED if bad or missing else 0


def _stem(ledger: Path) -> str:
    return ledger.name.removesuffix(".json")


def run_lines(folder: Path) -> list[dict[str, Any]]:
    """The run folder's metrics.jsonl lines, each an object with an integer 'round'."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise ConfideError(f"--run-folder {folder}: no metrics.jsonl; not a Confide run folder")
    lines = []
    try:
        for i, x in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if x.strip():
                line = json.loads(x)
                if not isinstance(line, dict) or not isinstance(line.get("round"), int):
                    raise ValueError(f"line {i} is not an object with an integer 'round'")
                if not isinstance(line.get("sites") or {}, dict):
                    raise ValueError(f"line {i}: 'sites' is not an object")
                lines.append(line)
    except (OSError, ValueError) as exc:
        raise ConfideError(f"--run-folder {folder}: metrics.jsonl is unreadable ({exc})") from None
    if not lines:
        raise ConfideError(f"--run-folder {folder}: metrics.jsonl is empty")
    return lines


def _check_run_folder(folder: Path, entries: list[dict], site: str) -> list[int]:
    """The rounds the run folder's metrics say ``site`` trained that the ledger lacks (printed)."""
    lines = run_lines(folder)
    job = str(lines[0].get("run_id", ""))  # the job is the run that started it; resumed rounds keep it
    trained = [x["round"] for x in lines if ((x.get("sites") or {}).get(site) or {}).get("train")]
    charged = {e.get("round") for e in entries if str(e.get("run")) == job and e.get("kind") in ("dpsgd", "central")}
    missing = [r for r in trained if r not in charged]
    print(f"run folder {folder} (job {job}): {len(trained) - len(missing)} of {len(trained)} rounds site '{site}' "
          "trained are in the ledger")  # fmt: skip
    for r in missing:
        print(f"  MISMATCH round {r}: trained in the run, absent from the ledger (a restarted ledger?)")
    return missing


def _same(a: HistoryEntry, b: HistoryEntry) -> bool:
    return math.isclose(a[0], b[0], rel_tol=1e-6) and math.isclose(a[1], b[1], rel_tol=1e-9) and a[2] == b[2]


if __name__ == "__main__":
    raise SystemExit(main())
