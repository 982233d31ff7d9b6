"""Check a privacy ledger's epsilon independently: ``python -m common.privacy.check LEDGER``.

For a privacy officer. Prints, for a site's ledger (or one site of the coordinator's central
ledger, ``--site``):
- the entries (committed and reserved: a reserved entry counts as spent);
- epsilon at the given delta composed by Opacus (the accountant Confide reports with), and by
  Google's ``dp_accounting`` (an independent implementation: RDP, and PLD for comparison), where
  that package is installed (``pip install dp-accounting``);
- with ``--config <run>/config.yaml --records N``: the DP-SGD history rebuilt from the job's
  configuration alone (noise multiplier as configured or calibrated, sample rate 1/ceil(N/B),
  steps per round), compared entry by entry with what the ledger recorded for ``--run``;
- with ``--run-folder <run>``: every round the run's metrics.jsonl says the site trained must be in
  the ledger under the run's job (a ledger that restarted, e.g. a run resumed against another
  ledger, misses rounds and is reported).
Exit status 1 if the rebuilt history or the run folder and the ledger disagree.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from common import config as config_mod
from common.errors import ConfideError
from common.privacy.accounting import HistoryEntry, calibrate, default_delta, epsilon
from common.privacy.ledger import Ledger, history_of


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
        if p.target_epsilon
        else p.noise_multiplier
    )
    return (sigma, q, steps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=sys.argv[0] if sys.argv[0].startswith("confide ") else "python -m common.privacy.check",
        description=__doc__.splitlines()[0],
    )
    ap.add_argument("ledger", type=Path)
    ap.add_argument("--delta", type=float, default=0.0, help="delta (default: min(1e-5, 1/(10 n)) with --records)")
    ap.add_argument("--records", type=int, default=0, help="n: the site's training records (or number of sites)")
    ap.add_argument("--accountant", choices=("rdp", "prv"), default="rdp")
    ap.add_argument("--site", default="", help="one site's entries of a central (coordinator) ledger")
    ap.add_argument("--config", type=Path, default=None, help="a run's config.yaml: rebuild its DP-SGD history")
    ap.add_argument("--run", default="", help="the run id whose entries --config is compared with")
    ap.add_argument(
        "--run-folder", type=Path, default=None, help="a run folder whose trained rounds must be in the ledger"
    )
    args = ap.parse_args(argv)
    try:
        return _check(args)
    except ConfideError as exc:
        print(f"[confide] error: {exc}", file=sys.stderr)
        return 2


def _check(args: argparse.Namespace) -> int:
    if not args.ledger.is_file():
        raise ConfideError(f"ledger not found: {args.ledger}")
    entries = [e for e in Ledger.open(args.ledger).entries if not args.site or e.get("site") == args.site]
    if not args.delta and not args.records:
        raise ConfideError("give --delta, or --records to use the default delta min(1e-5, 1/(10 n))")
    delta = args.delta or default_delta(args.records)
    history = history_of(entries)
    reserved = sum(e.get("status") == "reserved" for e in entries)
    print(f"ledger {args.ledger}: {len(entries)} entries ({reserved} reserved, counted as spent)")
    for kind in sorted({str(e.get("kind", "dpsgd")) for e in entries}):
        rows = [e for e in entries if str(e.get("kind", "dpsgd")) == kind]
        print(f"  {kind}: {len(rows)} entries, {sum(int(e['steps']) for e in rows)} steps")
    eps = epsilon(history, delta, args.accountant, args.records or None)
    print(f"epsilon (Opacus {args.accountant}) at delta={delta:.3g}: {eps:.4f}")
    for kind in ("rdp", "pld"):
        other = independent_epsilon(history, delta, kind)
        print(f"epsilon (dp_accounting {kind}, independent): " + ("not installed" if other is None else f"{other:.4f}"))
    site = args.site or _stem(args.ledger)
    missing = [] if args.run_folder is None else _check_run_folder(args.run_folder, entries, site)
    if args.config is None:
        return 1 if missing else 0
    if not args.records:
        raise ConfideError("--config needs --records (the site's training records)")
    exp = config_mod.load(args.config)
    expected = rebuilt_history(exp, args.records)
    mine = [e for e in entries if e.get("kind", "dpsgd") == "dpsgd" and (not args.run or e.get("run") == args.run)]
    bad = [e for e in mine if not _same(history_of([e])[0], expected)]
    print(f"rebuilt from {args.config}: noise {expected[0]:.6g}, sample rate {expected[1]:.6g}, steps {expected[2]} "
          f"per round; {len(mine) - len(bad)} of {len(mine)} ledger rounds match")  # fmt: skip
    for e in bad:
        print(f"  MISMATCH round {e.get('round')}: {history_of([e])[0]}")
    return 1 if bad or missing else 0


def _stem(ledger: Path) -> str:
    return ledger.name.removesuffix(".json")


def _check_run_folder(folder: Path, entries: list[dict], site: str) -> list[int]:
    """The rounds the run folder's metrics say ``site`` trained that the ledger lacks (printed)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise ConfideError(f"--run-folder {folder}: no metrics.jsonl; not a Confide run folder")
    try:
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, ValueError) as exc:
        raise ConfideError(f"--run-folder {folder}: metrics.jsonl is unreadable ({exc})") from None
    if not lines:
        raise ConfideError(f"--run-folder {folder}: metrics.jsonl is empty")
    job = str(lines[0].get("run_id", ""))  # the job is the run that started it; resumed rounds keep it
    trained = [int(x["round"]) for x in lines if (x.get("sites", {}).get(site) or {}).get("train")]
    charged = {int(e["round"]) for e in entries if str(e.get("run")) == job and e.get("kind") in ("dpsgd", "central")}
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
