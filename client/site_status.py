"""``confide site-status``: what a site's admin needs to see, read from the site's own disk.

    confide site-status                       # in the site container: its settings and paths
    confide site-status --ledger-dir DIR --policy FILE --site NAME   # a site run outside a container

Prints the privacy policy in force (the same merge the site applies: built-in strict default <
policy file < node-config overrides), then for each ledger in the ledger folder the epsilon spent
over everything the site ever trained, what is left under its cap, epsilon per job, how many more
jobs like the last one fit, and the last messages the site sent (its audit log).

Defaults come from the site container's settings (``CONFIDE_SITE_NAME``, ``CONFIDE_PRIVACY_POLICY``,
``CONFIDE_MAX_EPSILON``, ``CONFIDE_MIN_NOISE_MULTIPLIER``, ``CONFIDE_LEDGER_DIR``), else the
image's paths. Epsilon is composed by the RDP accountant (Confide's default ``privacy.accountant``)
at the delta the last job used; a site whose jobs ask for ``prv`` is charged by PRV instead, which
gives a slightly different figure. Reading only: nothing here writes to the ledger.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.audit_log import read_log
from common.cli import Parser, prog, refuse
from common.errors import ConfideError
from common.privacy.governance.check import read_entries
from common.privacy.governance.ledger import history_of
from common.privacy.governance.policy import NODE_KEYS, POLICY_FILE_KEY, SitePolicy, from_node_config
from common.privacy.mechanism.accounting import epsilon

IMAGE_POLICY = "/etc/confide/privacy-policy.json"
IMAGE_LEDGER_DIR = "/var/lib/confide/ledger"
AUDIT_SUFFIX = ".audit.jsonl"
MORE_JOBS_SHOWN = 100  # "at least 100" beyond this: counting further only costs time


@dataclass(frozen=True)
class JobSpend:
    run: str
    rounds: list[int]
    entries: int
    epsilon: float  # this job's entries alone


@dataclass(frozen=True)
class LedgerStatus:
    path: Path
    entries: int
    reserved: int
    delta: float
    spent: float
    remaining: float
    jobs: list[JobSpend]
    more_like_last: int | None  # None: no job yet


def policy_in_force(policy_file: str, overrides: dict[str, str], ledger_dir: str) -> SitePolicy:
    """The site's policy as its SuperNode builds it from the node config the entrypoint writes."""
    node_config: dict[str, Any] = {k: v for k, v in overrides.items() if v != ""}
    if policy_file:
        node_config[POLICY_FILE_KEY] = policy_file
    node_config["ledger-dir"] = ledger_dir
    return from_node_config(node_config, deployed=True)


def _epsilon(entries: list[dict[str, Any]], delta: float) -> float:
    """RDP epsilon of ``entries``; entries with the same (noise, sample rate) are merged first
    (RDP composes linearly in steps), so a long ledger costs one term per distinct pair."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, q, k in history_of(entries):
        steps[(sigma, q)] = steps.get((sigma, q), 0) + k
    return epsilon([(sigma, q, k) for (sigma, q), k in steps.items()], delta)


def _delta(entries: list[dict[str, Any]]) -> float:
    """The delta of the last entry that records one (the last job's); 1e-5 (the strict cap) else."""
    for e in reversed(entries):
        if isinstance(e.get("delta"), int | float) and 0 < e["delta"] < 1:
            return float(e["delta"])
    return 1e-5


def jobs_of(entries: list[dict[str, Any]], delta: float) -> list[JobSpend]:
    """One row per run id, in the order each run first appears in the ledger."""
    order: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        order.setdefault(str(e.get("run", "?")), []).append(e)
    return [
        JobSpend(run, sorted({int(e["round"]) for e in rows if "round" in e}), len(rows), _epsilon(rows, delta))
        for run, rows in order.items()
    ]


def more_jobs(entries: list[dict[str, Any]], last: list[dict[str, Any]], delta: float, cap: float) -> int:
    """How many more jobs spending what ``last`` spent keep the site's epsilon within ``cap``."""
    n = 0
    while n < MORE_JOBS_SHOWN and _epsilon(entries + last * (n + 1), delta) <= cap:
        n += 1
    return n


def ledger_status(path: Path, cap: float) -> LedgerStatus:
    entries = read_entries(path)
    delta = _delta(entries)
    spent = _epsilon(entries, delta)
    jobs = jobs_of(entries, delta)
    more = None
    if jobs and math.isfinite(cap):
        last = [e for e in entries if str(e.get("run", "?")) == jobs[-1].run]
        more = more_jobs(entries, last, delta, cap)
    reserved = sum(e.get("status") == "reserved" for e in entries)
    return LedgerStatus(path, len(entries), reserved, delta, spent, cap - spent, jobs, more)


def ledgers_in(ledger_dir: Path, site: str) -> list[Path]:
    if site:
        return [ledger_dir / f"{_safe(site)}.json"]
    return sorted(p for p in ledger_dir.glob("*.json") if not p.name.endswith(AUDIT_SUFFIX))


def _safe(name: str) -> str:
    """The ledger's file name for a site name, as the site writes it (common.site.ledger_path)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "site"


def last_messages(ledger: Path, count: int) -> tuple[Path, list[dict[str, Any]], int]:
    """(audit log, its last ``count`` lines, its number of lines); empty when there is no log."""
    log = ledger.with_name(ledger.name.removesuffix(".json") + AUDIT_SUFFIX)
    if not log.is_file():
        return log, [], 0
    lines = read_log(log)
    return log, lines[-count:] if count else [], len(lines)


def _policy_lines(policy: SitePolicy) -> list[str]:
    shown = {key: getattr(policy, attr) for key, attr in NODE_KEYS.items() if key != "ledger-dir"}
    parts = [f"{k} {','.join(v) if isinstance(v, tuple) else _num(v)}" for k, v in shown.items()]
    return [f"policy in force ({policy.source}):", "  " + " | ".join(parts)]


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:g}" if isinstance(v, float) else str(v)


def report(policy: SitePolicy, ledger_dir: Path, site: str, last: int) -> str:
    out = [f"site {site or '(every ledger in the folder)'}, ledger folder {ledger_dir}", *_policy_lines(policy)]
    paths = ledgers_in(ledger_dir, site)
    if not any(p.is_file() for p in paths):
        out.append(f"no privacy ledger yet in {ledger_dir}: this site has spent nothing "
                   f"(epsilon 0 of {_num(policy.max_epsilon)})")  # fmt: skip
        return "\n".join(out)
    for path in paths:
        if not path.is_file():
            out.append(f"ledger {path}: none yet (epsilon 0 of {_num(policy.max_epsilon)})")
            continue
        st = ledger_status(path, policy.max_epsilon)
        out.append(f"ledger {path}: {st.entries} entries ({st.reserved} reserved, counted as spent)")
        out.append(f"  epsilon spent {st.spent:.4f} of {_num(policy.max_epsilon)} (delta {st.delta:.3g}, rdp); "
                   f"remaining {st.remaining:.4f}")  # fmt: skip
        if st.more_like_last is not None:
            bound = "at least " if st.more_like_last >= MORE_JOBS_SHOWN else ""
            out.append(f"  room for {bound}{st.more_like_last} more job(s) like the last one "
                       f"(run {st.jobs[-1].run}, epsilon {st.jobs[-1].epsilon:.4f} alone)")  # fmt: skip
        out.append("  per job:  run | rounds | entries | epsilon of this job alone")
        for job in st.jobs:
            rounds = f"{job.rounds[0]}-{job.rounds[-1]}" if job.rounds else "-"
            out.append(f"    {job.run} | {rounds} | {job.entries} | {job.epsilon:.4f}")
        log, lines, total = last_messages(path, last)
        if not total:
            out.append(f"  audit log {log}: none yet")
            continue
        out.append(f"  last {len(lines)} of {total} messages sent ({log}):")
        for r in lines:
            err = r.get("error") or {}
            what = (f"{'REFUSED' if err.get('refused') else 'ERROR'}: {err.get('message', '')}" if err
                    else f"{len(r.get('tensors', []))} tensors, {r.get('bytes', 0)} bytes")  # fmt: skip
            eps = "-" if r.get("epsilon") is None else f"{float(r['epsilon']):.4f}"
            out.append(f"    {r.get('time', '')}  run {r.get('run', '')}  round {r.get('round', '')}  "
                       f"{r.get('type', '')}  {r.get('outcome', '')}  epsilon {eps}  {what}")  # fmt: skip
    return "\n".join(out)


def check_args(args: argparse.Namespace) -> dict[str, str]:
    """Every setting checked before anything is read; returns the policy overrides."""
    if args.last < 0:
        raise ConfideError(f"--last {args.last} is out of range: last >= 0 (messages to show)")
    folder = args.ledger_dir
    if folder.exists() and not folder.is_dir():
        raise ConfideError(f"--ledger-dir {folder} is a file; the site's ledger folder is expected")
    if not folder.exists():
        raise ConfideError(f"--ledger-dir {folder} not found (default $CONFIDE_LEDGER_DIR, else {IMAGE_LEDGER_DIR})")
    others = [p.name.removesuffix(".json") for p in ledgers_in(folder, "")]
    own = ledgers_in(folder, args.site)[0] if args.site else None
    if own is not None and not own.is_file() and others:
        # A site with no ledger yet in a folder that holds other sites' ledgers: most likely a misspelt name.
        raise ConfideError(f"--site {args.site!r} (or $CONFIDE_SITE_NAME): no ledger {own}; the folder holds "
                           f"the ledgers of: {', '.join(others)}")  # fmt: skip
    if args.policy:
        policy = Path(args.policy)
        if policy.is_dir():
            raise ConfideError(f"--policy {policy} is a folder; the site's privacy policy JSON file is expected")
        if not policy.is_file():
            raise ConfideError(f"--policy {policy}: privacy policy file not found (default $CONFIDE_PRIVACY_POLICY)")
        if not policy.read_bytes().strip():
            raise ConfideError(f"--policy {policy} is empty; a privacy policy is a JSON object")
    limits = {"max-epsilon": ("--max-epsilon", "$CONFIDE_MAX_EPSILON", "> 0", lambda v: v > 0),
              "min-noise-multiplier": ("--min-noise-multiplier", "$CONFIDE_MIN_NOISE_MULTIPLIER", ">= 0",
                                       lambda v: v >= 0)}  # fmt: skip
    overrides = {"max-epsilon": args.max_epsilon, "min-noise-multiplier": args.min_noise_multiplier}
    for key, value in overrides.items():
        flag, env, bound, ok = limits[key]
        if value == "":
            continue
        try:
            number = float(value)
        except ValueError:
            raise ConfideError(f"{flag} {value!r} (or {env}) is not a number; it must be {bound}") from None
        if math.isnan(number) or not ok(number):
            raise ConfideError(f"{flag} {value} (or {env}) is out of range: it must be {bound}")
    return overrides


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = Parser(
        prog=prog("python -m client.site_status"),
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    parser.add_argument(
        "--site",
        default=env.get("CONFIDE_SITE_NAME", ""),
        help="the site's name (default $CONFIDE_SITE_NAME; empty: every ledger in the folder)",
    )
    parser.add_argument(
        "--ledger-dir",
        type=Path,
        default=Path(env.get("CONFIDE_LEDGER_DIR", IMAGE_LEDGER_DIR)),
        help=f"the site's ledger folder (default $CONFIDE_LEDGER_DIR, else {IMAGE_LEDGER_DIR})",
    )
    parser.add_argument(
        "--policy",
        default=env.get("CONFIDE_PRIVACY_POLICY", IMAGE_POLICY if Path(IMAGE_POLICY).is_file() else ""),
        help=f"the site's policy file (default $CONFIDE_PRIVACY_POLICY, else {IMAGE_POLICY} where it exists)",
    )
    parser.add_argument(
        "--max-epsilon",
        default=env.get("CONFIDE_MAX_EPSILON", ""),
        help="the site's max-epsilon override, > 0 (default $CONFIDE_MAX_EPSILON)",
    )
    parser.add_argument(
        "--min-noise-multiplier",
        default=env.get("CONFIDE_MIN_NOISE_MULTIPLIER", ""),
        help="the site's min-noise-multiplier override, >= 0 (default $CONFIDE_MIN_NOISE_MULTIPLIER)",
    )
    parser.add_argument("--last", type=int, default=5, help="how many of the last messages sent to show (5; >= 0)")
    try:
        args = parser.parse_args(argv)
        overrides = check_args(args)
        policy = policy_in_force(args.policy, overrides, str(args.ledger_dir))
        text = report(policy, args.ledger_dir, args.site, args.last)
    except ConfideError as exc:
        return refuse(str(exc).replace(f" (node config '{POLICY_FILE_KEY}')", " (--policy)"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
