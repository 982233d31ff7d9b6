"""The Python side of ``scripts/run-local.sh`` (Flower's ``flwr run .`` on its local SuperLink).

    python -m simulations.run_local prepare EXPERIMENT "OVERRIDES"   # what the script runs first
    python -m simulations.run_local superlink           # the local SuperLink: pid, owner, folder, Python
    python -m simulations.run_local superlink --stop    # stop it (yours only; by its process id)

``prepare`` checks the overrides with Confide's loader before any Flower process starts, quotes
string values Flower's parser would refuse (``data.label_field=label`` -> ``data.label_field='label'``),
and makes ``experiment``, ``output_dir`` and ``resume`` absolute: Flower's local SuperLink runs
every job from the folder it was started in, which may be another checkout of the project, and a
relative path would resolve there. It prints the number of sites, then the run config.

``superlink`` names the running local SuperLink: one is shared by every local run on the machine
(Flower starts it on a fixed port the first time and leaves it running), and it runs jobs with the
Python environment and folder it was started from.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from common import cli, config
from common.errors import ConfideError

# Flower's own pattern for --run-config (flwr.common.config.parse_config_args).
PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")
PATH_KEYS = ("experiment", "output_dir", config.RESUME_KEY)
# File paths in the experiment (YAML or override) that a local SuperLink started from another
# folder would resolve against its own: passed absolute. model.checkpoint only when it is a local
# folder (it may also name a model by its hub name).
FILE_KEYS = ("data.path", "data.test_path", "model.weights", "model.checkpoint")


def control_port() -> str:
    """The port of Flower's managed local SuperLink's Control API (as flwr reads it)."""
    return os.environ.get("FLWR_LOCAL_CONTROL_API_PORT", "39093")


# ---- overrides ----------------------------------------------------------------------------------


def split_pairs(text: str) -> list[tuple[str, str]]:
    """``key=value`` pairs as Flower's parser finds them; anything else in ``text`` is refused
    (Flower would drop it silently)."""
    pairs = PAIR.findall(text)
    rest = PAIR.sub(" ", text).strip()
    if rest:
        example = "train.lr=0.01 data.label_field='label'"
        raise ConfideError(f"overrides: '{rest.split()[0]}' is not key=value (e.g. {example})")
    return pairs


def toml_value(value: str) -> str:
    """``value`` as Flower's parser accepts it: kept if it is a TOML number, boolean or quoted
    string, else quoted as a string (``label`` -> ``'label'``)."""
    import tomli

    try:
        parsed = tomli.loads(f"v = {value}")["v"]
    except tomli.TOMLDecodeError:
        return quote(value)
    return value if isinstance(parsed, (bool, int, float, str)) else quote(value)


def quote(text: str) -> str:
    return f"'{text}'" if "'" not in text else json.dumps(text)


def unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


@dataclass(frozen=True)
class Prepared:
    sites: int
    run_config: str


def prepare(experiment: str, overrides: str, check: bool = True) -> Prepared:
    """Check the experiment, overrides, data and model source (and a run folder to resume) as the
    ServerApp will, and return the run config for ``flwr run --run-config`` with absolute paths.
    ``check=False`` leaves out the files' contents (the paths alone are rewritten)."""
    from flwr.common.config import parse_config_args

    pairs = [(key, toml_value(value)) for key, value in split_pairs(overrides)]
    given = dict(pairs)
    text = " ".join(f"{k}={v}" for k, v in pairs if k not in PATH_KEYS + FILE_KEYS)
    try:
        parsed = parse_config_args([text]) if text else {}
    except Exception as exc:  # click.ClickException or ValueError: one line, with the quoting shown
        raise ConfideError(
            f"overrides {overrides!r} are not Flower run-config pairs ({exc}); string values need quotes: "
            "\"data.label_field='label' train.lr=0.01\""
        ) from None
    for key in ("output_dir", *FILE_KEYS):
        if key in given:
            parsed[key] = unquote(given[key])
    experiment = unquote(given.get("experiment", quote(experiment)))
    exp = config.load(experiment, parsed)
    paths = {"experiment": Path(experiment).resolve(), "output_dir": config.resolve_path(exp.output_dir)}
    files = {"data.path": exp.data.path, "data.test_path": exp.data.test_path, "model.weights": exp.model.weights,
             "model.checkpoint": exp.model.checkpoint}  # fmt: skip
    for key, value in files.items():
        if value and (key != "model.checkpoint" or config.resolve_path(value).exists()):
            paths[key] = config.resolve_path(value)  # as this checkout reads it, whichever SuperLink runs the job
        elif key in given:
            paths[key] = value
    resume = unquote(given.get(config.RESUME_KEY, "''"))
    if resume:
        paths[config.RESUME_KEY] = config.resolve_path(resume)
    # The data files, labels, sites' partitions, model source and a folder to resume, checked before
    # any Flower process starts: found inside the ServerApp they would end in Flower's traceback.
    if check:
        from server.run import preflight

        preflight(exp, paths.get(config.RESUME_KEY))
    absolute = " ".join(f"{k}={quote(str(v))}" for k, v in paths.items())
    return Prepared(exp.data.num_sites, f"{absolute} {text}".strip())


# ---- the local SuperLink ------------------------------------------------------------------------


@dataclass(frozen=True)
class SuperLink:
    pid: int
    uid: int
    cwd: Path | None  # None: not readable (another user's process)
    bin_dir: Path | None  # the folder of the flower-superlink it runs (its Python environment)


def find_superlinks(proc: Path = Path("/proc"), port: str | None = None) -> list[SuperLink]:
    """Flower's managed local SuperLinks (``--control-api-address 127.0.0.1:PORT``) in ``proc``."""
    address = f"127.0.0.1:{port or control_port()}"
    found = []
    for entry in sorted(proc.glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            uid = entry.stat().st_uid
        except OSError:
            continue
        script = next((a for a in args if Path(a).name == "flower-superlink"), None)
        if script is None or address not in _option(args, "--control-api-address"):
            continue
        found.append(SuperLink(int(entry.name), uid, _cwd(entry), _bin_dir(script, args)))
    return found


def _option(args: list[str], name: str) -> list[str]:
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    return values + [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]


def _cwd(entry: Path) -> Path | None:
    try:
        return Path(os.readlink(entry / "cwd"))
    except OSError:
        return None


def _bin_dir(script: str, args: list[str]) -> Path | None:
    if Path(script).is_absolute():
        return Path(script).parent
    return Path(args[0]).parent if args and Path(args[0]).is_absolute() else None


def check_superlink(links: list[SuperLink], repo: Path, bin_dir: Path, uid: int) -> tuple[int, str]:
    """(exit code, one line) about the local SuperLink a job from ``repo`` run with ``bin_dir``'s
    Python would go to: 0 and "" when none runs (flwr starts one here), 0 and a note when it is
    another checkout's or environment's (the job would run with that one's packages), 1 when it is
    another user's."""
    if not links:
        return 0, ""
    link = links[0]
    stop = f"python -m simulations.run_local superlink --stop (or kill {link.pid})"
    if link.uid != uid:
        return 1, (
            f"run-local: the local SuperLink on 127.0.0.1:{control_port()} (pid {link.pid}) belongs to user "
            f"{_user(link.uid)}; a job sent there would run under their account. Ask them to stop it, or "
            "run in-process: python -m simulations.local EXPERIMENT --set KEY=VALUE"
        )
    elsewhere = []
    if link.cwd is not None and link.cwd.resolve() != repo.resolve():
        elsewhere.append(f"folder {link.cwd}")
    if link.bin_dir is not None and link.bin_dir != bin_dir:
        elsewhere.append(f"Python {link.bin_dir}")
    if elsewhere:
        return 0, (
            f"run-local: note: the local SuperLink (pid {link.pid}) was started from {' and '.join(elsewhere)}, "
            f"not this checkout; this job runs with its Python packages (outputs still go to this checkout). "
            f"To use this checkout's: {stop} -- it also ends the jobs it runs -- then run again"
        )
    return 0, f"run-local: using the local SuperLink already running (pid {link.pid}; shared by all local runs)"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def describe(link: SuperLink) -> str:
    return (
        f"pid {link.pid}  user {_user(link.uid)}  folder {link.cwd or '(not readable)'}  "
        f"python {link.bin_dir or '(unknown)'}"
    )


def stop_superlinks(links: list[SuperLink], uid: int) -> list[int]:
    """SIGTERM the given SuperLinks owned by ``uid``; return their process ids."""
    stopped = []
    for link in links:
        if link.uid == uid:
            os.kill(link.pid, signal.SIGTERM)
            stopped.append(link.pid)
    return stopped


# ---- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = cli.Parser(prog="python -m simulations.run_local", description=__doc__, formatter_class=raw)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=cli.Parser)
    prep = sub.add_parser("prepare", help="check and complete the run config (prints sites, then run config)")
    prep.add_argument("experiment")
    prep.add_argument("overrides", nargs="?", default="")
    check = sub.add_parser("check", help="one line about the running local SuperLink; exit 1 if another user's")
    check.add_argument("repo", type=Path)
    link = sub.add_parser("superlink", help="show the running local SuperLink")
    link.add_argument("--stop", action="store_true", help="stop it (SIGTERM by process id; yours only)")
    try:
        args = parser.parse_args(argv)
    except ConfideError as exc:
        return cli.refuse(exc)
    if args.command == "prepare":
        try:
            prepared = prepare(args.experiment, args.overrides)
        except ConfideError as exc:
            return cli.refuse(exc)
        print(prepared.sites)
        print(prepared.run_config)
        return 0
    links = find_superlinks()
    if args.command == "check":
        code, line = check_superlink(links, args.repo, Path(sys.executable).parent, os.getuid())
        if line:
            print(line, file=sys.stderr)
        return code
    if not links:
        print(f"no local SuperLink is running (127.0.0.1:{control_port()})")
        return 0
    for found in links:
        print(describe(found))
    if args.stop:
        stopped = stop_superlinks(links, os.getuid())
        print(f"stopped (SIGTERM): {' '.join(map(str, stopped)) or 'none of them is yours'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
