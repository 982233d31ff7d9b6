"""A site's audit log: every message it sends, recorded on its own disk before it is sent.

``audit_log_mod(fixed)`` is a Flower ClientApp mod, meant to be the **outermost** one, so that it
records exactly what leaves the site (after central-DP clipping and any other mod). Per message it
appends one JSON line to ``<site>.audit.jsonl`` in the folder of the site's privacy ledger
(``common.site.ledger_path``: the policy's ``ledger-dir`` for a deployed site, else
the data set's folder under the Confide state folder in simulation), then returns the reply. The line is written with
one ``write`` on a file opened ``O_APPEND`` under an exclusive ``flock`` and ``fsync``'d before
the reply is returned; the file is opened before the site does any work, so an unwritable log
refuses the message before anything is trained or spent, and a failed write stops the reply (the
mod raises, so Flower sends an error instead; nothing leaves unrecorded). A message whose handler
raises (a refusal by the site's policy, a failure) is recorded with the exception's class and
message, and the exception is re-raised unchanged. A node config too broken to name the log's
folder stops the message before the handler runs (the handler would refuse it the same way).

Each line: ``v`` (format, 1), ``time`` (UTC, ISO 8601), ``run`` (Flower run id), ``job``,
``round`` (the config's ``server-round``), ``phase`` (only in the rounds of the job's baseline:
``baseline``, common/baseline.py), ``type`` (Flower message type), ``site``, ``request``
(the message id replied to), ``outcome`` (``sent`` or ``error``), ``tensors`` (record, name,
shape, dtype of each), ``bytes`` (sum of the tensors' raw sizes: ``bytes_up`` in the run's
``metrics.jsonl``; plus the bytes carried as config values, which under SecAgg+ are the keys,
encrypted shares and the masked update), ``sha256`` (below; null without tensors), ``metrics`` (every scalar metric;
a record other than ``metrics`` prefixes its keys with ``<record>.``), ``configs`` (the reply's
config records), ``epsilon`` (the reply's ``epsilon`` metric, the site's cumulative ε after the
round, else null), ``error`` (null, or ``type``, ``message``: the exception's text, which Flower
forwards to the coordinator, ``refused``: a refusal by the site's policy, and ``detail``: the full
reason a deployed site keeps to itself, from ``SiteFailure.detail`` in client/public_errors.py). Non-finite floats are
written as the strings ``"nan"``, ``"inf"``, ``"-inf"``, bytes as hex strings (longer than
256 bytes: ``{"bytes": N, "sha256": H}``, so a masked update is identified, not copied).

The payload hash (``sha256``), recomputable from what the server receives: SHA-256 over every
tensor of every array record of the reply, in order of (record name, tensor name) (sorted by code
point), each contributing

    json.dumps({"dtype": D, "name": K, "nbytes": N, "record": R, "shape": S},
               sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\\n" + DATA

where ``a`` is the tensor as numpy (``Array.numpy()``) converted to little-endian byte order,
D is ``a.dtype.str`` (``"<f4"``, ``"|u1"``, ...), S is ``list(a.shape)``, DATA is
``a.tobytes(order="C")`` and N is ``len(DATA)``. A tensor Flower does not
hold as numpy cannot be recorded this way and is refused (Confide sends numpy tensors only).

Privacy officer's view: ``python -m client.audit_log show <site>.audit.jsonl`` (or
``confide-site-audit show ...``) prints the log as a table; ``--json`` prints its lines as they are.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from common.cli import Parser, refuse
from common.config import ExperimentConfig
from common.errors import ConfideError, PolicyRefused

SUFFIX = ".audit.jsonl"
FORMAT = 1
POLICY_REFUSED_CODE = "[policy-refused]"  # how a deployed site's public failure marks a refusal (public_errors)
Tensors = Mapping[str, Mapping[str, np.ndarray]]  # record name -> tensor name -> array


# -- the record (no Flower) ------------------------------------------------------------------


def _little_endian(a: np.ndarray) -> np.ndarray:
    """``a`` in little-endian byte order and C order (a copy only where it is not already)."""
    return a.astype(a.dtype.newbyteorder("<"), order="C", copy=False)


def _le_dtype(a: Any) -> str:
    return np.asarray(a).dtype.newbyteorder("<").str


def payload_sha256(tensors: Tensors) -> str | None:
    """The payload hash defined in the module docstring; None when there is no tensor."""
    h, any_tensor = hashlib.sha256(), False
    for record in sorted(tensors):
        for name in sorted(tensors[record]):
            a = _little_endian(np.asarray(tensors[record][name]))
            head = {"dtype": a.dtype.str, "name": name, "nbytes": a.nbytes, "record": record, "shape": list(a.shape)}
            h.update(json.dumps(head, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n")
            h.update(a.tobytes(order="C"))
            any_tensor = True
    return h.hexdigest() if any_tensor else None


LONG_BYTES = 256


def _config_bytes(configs: Mapping[str, Mapping[str, Any]] | None) -> int:
    """Bytes carried as config values (SecAgg+'s keys, encrypted shares and masked vectors)."""
    total = 0
    for vals in (configs or {}).values():
        for v in vals.values():
            items = v if isinstance(v, list | tuple) else [v]
            total += sum(len(x) for x in items if isinstance(x, bytes))
    return total


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf"
    if isinstance(value, bytes):  # a long one (SecAgg+'s masked vector) by its size and hash
        return (
            value.hex()
            if len(value) <= LONG_BYTES
            else {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
        )
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def build_record(
    *,
    run: int,
    job: str,
    server_round: int | None,
    message_type: str,
    site: str,
    request: str = "",
    tensors: Tensors | None = None,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    error: BaseException | tuple[str, str] | None = None,
    now: datetime | None = None,
    phase: str = "",
) -> dict[str, Any]:
    """One line of the log: a reply's ``tensors``/``metrics``/``configs`` (by record name), or an
    ``error`` (the exception the handler raised, or (type, reason) of an error reply)."""
    tensors = tensors or {}
    flat = {
        (k if rec == "metrics" else f"{rec}.{k}"): _jsonable(v)
        for rec, vals in (metrics or {}).items()
        for k, v in vals.items()
    }
    err: dict[str, Any] | None = None
    if isinstance(error, BaseException):  # a deployed site's SiteFailure (client/public_errors.py) has a detail
        detail = getattr(error, "detail", None)
        refused = isinstance(error, PolicyRefused) or str(error).startswith(POLICY_REFUSED_CODE)
        err = {"type": type(error).__name__, "message": str(error), "refused": refused}
        err["detail"] = detail if isinstance(detail, str) else None
    elif error is not None:
        err = {"type": error[0], "message": error[1], "refused": False, "detail": None}
    eps = flat.get("epsilon")
    return {
        "v": FORMAT,
        "time": (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "run": run,
        "job": job,
        "round": server_round,
        # the part of the job: "" its model, "baseline" its baseline (common/baseline.py), whose
        # rounds are numbered from 1 too
        **({"phase": phase} if phase else {}),
        "type": message_type,
        "site": site,
        "request": request,
        "outcome": "error" if err else "sent",
        "tensors": [
            {"record": rec, "name": k, "shape": list(np.shape(a)), "dtype": _le_dtype(a)}
            for rec in sorted(tensors)
            for k, a in sorted(tensors[rec].items())
        ],
        "bytes": int(sum(np.asarray(a).nbytes for rec in tensors.values() for a in rec.values()))
        + _config_bytes(configs),
        "sha256": payload_sha256(tensors),
        "metrics": flat,
        "configs": {rec: {k: _jsonable(v) for k, v in vals.items()} for rec, vals in (configs or {}).items()},
        "epsilon": eps if isinstance(eps, int | float) else None,
        "error": err,
    }


# -- the file ----------------------------------------------------------------------------------


def open_log(path: Path) -> int:
    """Open (create) the log for appending; the folder is made and, for a new file, fsync'd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    if new:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return fd


def append(fd: int, record: Mapping[str, Any]) -> None:
    """One line, under an exclusive lock, flushed to disk before returning (raises otherwise)."""
    line = memoryview((json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8"))
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        while line:
            line = line[os.write(fd, line) :]
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def append_record(path: Path, record: Mapping[str, Any]) -> None:
    fd = open_log(path)
    try:
        append(fd, record)
    finally:
        os.close(fd)


# -- the mod -----------------------------------------------------------------------------------


def log_path(msg: Message, context: Context, fixed: ExperimentConfig | None) -> tuple[Path, str, str]:
    """(the site's audit log, its name, the message's job): beside the site's ledger."""
    from client.experiment import experiment_of
    from common.privacy.governance.policy import from_node_config
    from common.site import SiteSpec, ledger_path

    spec = SiteSpec.from_node_config(context.node_config)
    policy = from_node_config(context.node_config, deployed=spec.deployed)
    config = _config_of(msg)
    job = str(config.get("job", "") or context.run_id)
    ledger = ledger_path(experiment_of(context, fixed), spec, policy)
    return ledger.with_name(ledger.name.removesuffix(".json") + SUFFIX), spec.name, job


def _config_of(msg: Message) -> Mapping[str, Any]:
    """The job's config record: ``config``, or ``fitins.config`` in SecAgg+'s masking stage (its
    key-exchange and unmasking stages carry none: their job is the Flower run's)."""
    records = msg.content.config_records
    return records.get("config") or records.get("fitins.config") or {}


def _numpy(record_name: str, name: str, array: Any) -> np.ndarray:
    try:
        return array.numpy()
    except TypeError as exc:  # not held as numpy: the hash would not be defined
        raise ValueError(f"audit log: tensor {record_name}/{name} is not a numpy array ({exc}); not sent") from None


def audit_log_mod(fixed: ExperimentConfig | None = None) -> Mod:
    """The mod (outermost): records every reply, or the handler's exception, before it leaves."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        path, site, job = log_path(msg, context, fixed)
        config = _config_of(msg)
        rnd = config.get("server-round")
        if rnd is None and msg.metadata.group_id.isdigit():  # SecAgg+'s key and unmask stages
            rnd = int(msg.metadata.group_id)
        common = {
            "run": int(context.run_id),
            "job": job,
            "server_round": int(rnd) if isinstance(rnd, int | float) else None,
            "message_type": msg.metadata.message_type,
            "site": site,
            "request": msg.metadata.message_id,
            "phase": str(config.get("phase", "") or ""),
        }
        fd = open_log(path)  # before any work: an unwritable log refuses the message
        try:
            try:
                reply = call_next(msg, context)
            except Exception as exc:
                append(fd, build_record(**common, error=exc))
                raise
            if reply.has_error():
                reason = f"code {reply.error.code}: {reply.error.reason}"
                append(fd, build_record(**common, error=("ErrorReply", reason)))
                return reply
            content = reply.content
            tensors = {
                r: {k: _numpy(r, k, a) for k, a in rec.items()} for r, rec in content.array_records.items()
            }  # fmt: skip
            metrics = {r: dict(rec) for r, rec in content.metric_records.items()}
            configs = {r: dict(rec) for r, rec in content.config_records.items()}
            append(fd, build_record(**common, tensors=tensors, metrics=metrics, configs=configs))
            return reply
        finally:
            os.close(fd)

    return mod


# -- the privacy officer's command ---------------------------------------------------------------


# An audit line's fields that the table reads, with the JSON types each may hold.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "tensors": (list,),
    "metrics": (dict,),
    "configs": (dict,),
    "error": (dict, type(None)),
    "epsilon": (int, float, str, type(None)),  # non-finite floats are written as strings
    "bytes": (int,),
    "sha256": (str, type(None)),
}


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every line of an audit log, each checked to be an audit record; a bad line raises
    ConfideError naming the file, the line and what is wrong."""
    if path.is_dir():
        raise ConfideError(f"audit log {path} is a folder; give a site's <site>{SUFFIX} file")
    if not path.is_file():
        raise ConfideError(f"audit log not found: {path}" if not path.exists() else f"audit log {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfideError(f"audit log {path} is not text (not UTF-8); give a site's <site>{SUFFIX} file") from None
    except OSError as exc:
        raise ConfideError(f"audit log {path} is unreadable ({exc.strerror or exc})") from None
    lines = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise ConfideError(f"audit log {path}, line {i}: not a JSON line ({exc})") from None
            if problem := _record_problem(record):
                raise ConfideError(f"audit log {path}, line {i}: {problem}")
            lines.append(record)
    return lines


def _record_problem(record: object) -> str | None:
    """Why a parsed line is not an audit record, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an audit record (an object per line)"
    if "time" not in record or "outcome" not in record:
        return "not an audit record (no 'time' or 'outcome'; is this a site's audit log?)"
    for key, types in FIELD_TYPES.items():
        if key in record and not isinstance(record[key], types):
            return f"'{key}' is a {type(record[key]).__name__}, not {' or '.join(_json_name(t) for t in types)}"
    return None


def _json_name(t: type) -> str:
    return {list: "a list", dict: "an object", int: "a number", float: "a number", str: "a string"}.get(t, "null")


def _eps(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(records: list[dict[str, Any]]) -> str:
    head = ("time", "run", "job", "round", "type", "site", "tensors", "bytes", "sha256", "epsilon", "metrics / error")
    rows = [head]
    for r in records:
        if r.get("error"):
            e = r["error"]
            last = f"{'REFUSED' if e.get('refused') else 'ERROR'} {e.get('type')}: {e.get('message')}"
            if e.get("detail"):
                last += f" (kept on site: {e['detail']})"
        else:
            last = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(r.get("metrics", {}).items()))
        rows.append(
            (
                str(r.get("time", "")),
                str(r.get("run", "")),
                str(r.get("job", "")),
                str(r.get("round", "")) + (f" ({r['phase']})" if r.get("phase") else ""),
                str(r.get("type", "")),
                str(r.get("site", "")),
                str(len(r.get("tensors", []))),
                str(r.get("bytes", "")),
                (r.get("sha256") or "-")[:16],
                _eps(r.get("epsilon")),
                last,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows)


def _prog(default: str) -> str:
    """`confide audit-log` when called through the `confide` command, else the default name."""
    return sys.argv[0] if sys.argv[0].startswith("confide ") else default


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog=_prog("confide-site-audit"), description="A site's audit log of what it sent.")
    sub = parser.add_subparsers(dest="subcommand", required=True)
    show = sub.add_parser("show", help="print a site's audit log (<site>.audit.jsonl) as a table")
    show.add_argument("log", type=Path)
    show.add_argument("--json", action="store_true", help="print the log's JSON lines as they are")
    try:
        args = parser.parse_args(argv)
        records = read_log(args.log)  # every line checked
    except ConfideError as exc:
        return refuse(exc)
    if not records:
        print(f"{args.log}: no messages recorded (the site has sent nothing)")
    else:
        print(args.log.read_text(encoding="utf-8").rstrip("\n") if args.json else table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
