"""``confide submit``: ``flwr run --stream`` that exits non-zero unless the job completed.

    confide submit . confide --run-config "experiment='simulations/configs/deploy_trial.yaml'"

The arguments are ``flwr run``'s own (app folder, connection, ``--run-config``, ...); ``--stream``
is added when missing, so the job's log follows in the terminal. ``flwr run --stream`` exits 0
whatever became of the job (a job that failed prints ``Exit Code: 201`` and still exits 0), so
once the stream ends this asks the SuperLink how the run ended (``flwr ls --run-id N <connection>
--format json``, waiting up to ``--wait`` seconds while it is still winding down) and exits

    0  the SuperLink reports ``finished:completed``
    1  it reports anything else (``finished:failed``, ``finished:stopped``, still running), naming it
    2  ``flwr run`` started no run (its own error is printed above), or the arguments are wrong
       (checked before anything is submitted: one ``confide: ...`` line)
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common import cli
from common.errors import ConfideError

COMPLETED = "finished:completed"
STARTED = re.compile(r"started run (\d+)")
# flwr run's options that take a value: the positional arguments are what is left.
VALUED = {"--run-config", "-c", "--federation-config", "--federation", "--format"}
FLAGS = {"--stream"}  # flwr run's options without a value (--help is answered here)
Runner = Callable[[list[str]], tuple[int, str]]


def flwr_command() -> str:
    """The ``flwr`` beside this Python (the environment Confide is installed in), else PATH's."""
    here = Path(sys.executable).parent / "flwr"
    return str(here) if here.exists() else (shutil.which("flwr") or "flwr")


def positionals(args: Sequence[str]) -> list[str]:
    """``flwr run``'s positional arguments (app folder, connection) among ``args``."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in VALUED:
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def run_id_of(output: str) -> int | None:
    """The run id ``flwr run`` printed ("Successfully started run N"); the last one if several."""
    found = STARTED.findall(output)
    return int(found[-1]) if found else None


def status_of(listing: str, run_id: int) -> tuple[str, str]:
    """(status, details) of ``run_id`` in ``flwr ls --format json`` output; ("", why) if absent."""
    try:
        runs = json.loads(listing[listing.index("{") :])["runs"]
    except (ValueError, KeyError, TypeError):
        return "", f"flwr ls answered no run list: {listing.strip()[-300:]}"
    for run in runs:
        if str(run.get("run-id")) == str(run_id):
            return str(run.get("status", "")), str(run.get("status-details", "") or "")
    return "", f"flwr ls does not list run {run_id}"


def stream(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd`` with its output shown as it comes and kept; (exit code, output)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    kept = []
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        kept.append(line)
    return proc.wait(), "".join(kept)


def quiet(cmd: list[str]) -> tuple[int, str]:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return res.returncode, res.stdout + res.stderr


def final_status(
    flwr: str, run_id: int, connection: list[str], wait: float, ask: Runner = quiet, pause: float = 2.0
) -> tuple[str, str]:
    """The run's status once it is finished, or its last status after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        _, listing = ask([flwr, "ls", "--run-id", str(run_id), *connection, "--format", "json"])
        status, details = status_of(listing, run_id)
        if status.startswith("finished") or time.monotonic() >= deadline:
            return status, details
        time.sleep(pause)


def submit(args: list[str], wait: float, run: Runner = stream, ask: Runner = quiet, pause: float = 2.0) -> int:
    flwr = flwr_command()
    if "--stream" not in args:
        args = [*args, "--stream"]
    code, output = run([flwr, "run", *args])
    run_id = run_id_of(output)
    if run_id is None:
        print(f"confide: flwr run started no run (exit code {code}; its message is above)", file=sys.stderr)
        return 2
    connection = positionals(args)[1:2]  # flwr ls takes the connection, not the app folder
    status, details = final_status(flwr, run_id, connection, wait, ask, pause)
    if status == COMPLETED:
        print(f"confide submit: run {run_id} {COMPLETED}")
        return 0
    why = f" ({details})" if details else ""
    print(f"confide: run {run_id} ended as {status or 'unknown'}{why}; not completed", file=sys.stderr)
    return 1


def split_wait(args: list[str]) -> tuple[float, list[str]]:
    """``--wait SECONDS`` (or ``--wait=SECONDS``) anywhere in ``args``: (seconds, the other args)."""
    wait, rest, i = 60.0, [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--wait" or arg.startswith("--wait="):
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else None)
            i += 1 if "=" in arg else 2
            if value is None:
                raise ConfideError("--wait needs a number of seconds (>= 0)")
            try:
                wait = float(value)
            except ValueError:
                raise ConfideError(f"--wait {value!r} is not a number of seconds (>= 0)") from None
            if not math.isfinite(wait) or wait < 0:
                raise ConfideError(f"--wait {value} is out of range: 0 <= seconds (finite)")
            continue
        rest.append(arg)
        i += 1
    return wait, rest


def check_flwr_args(args: list[str]) -> None:
    """flwr run's arguments as far as they can be checked here, before anything is submitted."""
    known = ", ".join(sorted(VALUED | FLAGS | {"--wait"}))
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if name in VALUED:
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else None)
            if value is None or (value.startswith("-") and "=" not in arg):
                raise ConfideError(f"{name} needs a value")
            if name == "--format" and value != "default":
                raise ConfideError(f"--format {value}: confide submit reads flwr run's default output; leave it out")
            if name in ("--run-config", "-c") and value.endswith(".toml") and "=" not in value:
                cli.existing_file(Path(value), f"{name} file")
            i += 1 if "=" in arg else 2
            continue
        if arg.startswith("-") and name not in FLAGS:
            raise ConfideError(f"unknown option {arg} (confide submit takes flwr run's: {known})")
        i += 1
    places = positionals(args)
    if not places:
        raise ConfideError('give the app folder (and the connection), as to flwr run: confide submit . confide '
                           '--run-config "..."')  # fmt: skip
    if len(places) > 2:
        raise ConfideError(f"too many arguments: {' '.join(places[2:])} (flwr run takes an app folder and a "
                           "connection; quote --run-config's value)")  # fmt: skip
    app = Path(places[0])
    cli.existing_folder(app, "app folder")
    if not (app / "pyproject.toml").is_file():
        raise ConfideError(f"app folder {app} is not a Flower app (no pyproject.toml); give Confide's folder")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        print("options: --wait SECONDS (default 60, >= 0): how long to wait for the SuperLink to report the run "
              "finished once the stream ends")  # fmt: skip
        return 0
    try:
        wait, args = split_wait(args)
        check_flwr_args(args)
        flwr = flwr_command()
        if shutil.which(flwr) is None:
            raise ConfideError(f"flwr not found ({flwr}); install Confide's environment (scripts/install.sh)")
    except ConfideError as exc:
        return cli.refuse(exc)
    return submit(args, wait, run=stream)


if __name__ == "__main__":
    sys.exit(main())
