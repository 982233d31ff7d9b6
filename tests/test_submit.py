"""`confide submit`: the documented way to submit a deployment job, and its exit status.

The end-to-end check (a real SuperLink, a job that fails, a non-zero exit) is in
tests/test_deploy.py; these tests feed `flwr`'s output to the command's logic."""

from __future__ import annotations

import json

import pytest

from simulations import cli, submit

pytestmark = pytest.mark.unit


def listing(run_id: int, status: str, details: str = "") -> str:
    """What `flwr ls --run-id N --format json` prints (Flower 1.42's keys)."""
    return "Loading project configuration...\n" + json.dumps(
        {"success": True, "runs": [{"run-id": str(run_id), "status": status, "status-details": details}]}
    )


class Flower:
    """Stands in for the two flwr calls: `flwr run` prints ``run_output``; each `flwr ls` answers
    the next status in ``statuses`` (the last one repeats)."""

    def __init__(self, run_output: str, statuses: list[str], run_code: int = 0) -> None:
        self.run_output, self.statuses, self.run_code = run_output, statuses, run_code
        self.calls: list[list[str]] = []
        self.asked = 0

    def run(self, cmd: list[str]) -> tuple[int, str]:
        self.calls.append(cmd)
        return self.run_code, self.run_output

    def ask(self, cmd: list[str]) -> tuple[int, str]:
        self.calls.append(cmd)
        status = self.statuses[min(self.asked, len(self.statuses) - 1)]
        self.asked += 1
        return 0, listing(42, status, "ServerApp exited with code 201" if "failed" in status else "")


STARTED = "Loading project configuration...\nSuccessfully started run 42\n... round 1 ...\n"
ARGS = [".", "confide", "--run-config", "experiment='simulations/configs/deploy_trial.yaml' name='x y'"]


def test_a_completed_job_exits_0_and_the_superlink_is_asked_about_that_run() -> None:
    """Proves the success path: `flwr run` gets the arguments with --stream added once, and the
    SuperLink is asked about run 42 on the same connection ('confide', not the app folder '.')."""
    fake = Flower(STARTED, ["finished:completed"])
    assert submit.submit(list(ARGS), wait=0, run=fake.run, ask=fake.ask) == 0
    run_cmd, ls_cmd = fake.calls
    assert run_cmd[1:] == ["run", *ARGS, "--stream"]
    assert ls_cmd[1:] == ["ls", "--run-id", "42", "confide", "--format", "json"]
    fake = Flower(STARTED, ["finished:completed"])
    submit.submit([*ARGS, "--stream"], wait=0, run=fake.run, ask=fake.ask)
    assert fake.calls[0].count("--stream") == 1


def test_a_failed_or_stopped_job_exits_1_naming_how_it_ended(capsys: pytest.CaptureFixture[str]) -> None:
    """Proves what `flwr run` hides (it exits 0 after "Exit Code: 201"): a job the SuperLink
    reports failed or stopped makes the command exit 1, with the status and its details."""
    fake = Flower(STARTED + "ERROR : Exit Code: 201\n", ["finished:failed"])
    assert submit.submit(list(ARGS), wait=0, run=fake.run, ask=fake.ask) == 1
    err = capsys.readouterr().err
    assert "run 42 ended as finished:failed (ServerApp exited with code 201); not completed" in err
    fake = Flower(STARTED, ["finished:stopped"])
    assert submit.submit(list(ARGS), wait=0, run=fake.run, ask=fake.ask) == 1
    assert "run 42 ended as finished:stopped; not completed" in capsys.readouterr().err


def test_a_job_still_winding_down_is_followed_until_it_finishes() -> None:
    """Proves the command waits for the final status instead of reading a transient one: the
    SuperLink says 'running' twice, then 'finished:completed'; the exit status is 0."""
    fake = Flower(STARTED, ["running", "running", "finished:completed"])
    code = submit.final_status("flwr", 42, ["confide"], 30, fake.ask, pause=0)[0] == submit.COMPLETED
    assert code and len(fake.calls) == 3
    fake = Flower(STARTED, ["running", "running", "finished:completed"])
    code = submit.submit(list(ARGS), wait=30, run=fake.run, ask=fake.ask, pause=0)
    assert code == 0 and len(fake.calls) == 4  # one run, three ls
    fake = Flower(STARTED, ["running"])
    assert submit.submit(list(ARGS), wait=0, run=fake.run, ask=fake.ask) == 1  # never finished: not completed


def test_no_run_started_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Proves a refused submission (no "started run" line: a bad connection, a 403) exits 2,
    never 0, and the SuperLink is not asked about any run."""
    fake = Flower("Connection refused\n", ["finished:completed"], run_code=1)
    assert submit.submit(list(ARGS), wait=0, run=fake.run, ask=fake.ask) == 2
    assert len(fake.calls) == 1 and "started no run (exit code 1" in capsys.readouterr().err


def test_parsing_of_flower_output() -> None:
    """Proves the two readers on Flower's texts: the run id is the last "started run N", the status
    is the listed run's (a missing run gives no status), and option values are not positionals."""
    assert submit.run_id_of("Successfully started run 7\nSuccessfully started run 1234567890123\n") == 1234567890123
    assert submit.run_id_of("nothing") is None
    assert submit.status_of(listing(9, "finished:failed", "why"), 9) == ("finished:failed", "why")
    assert submit.status_of(listing(9, "finished:completed"), 10)[0] == ""
    assert submit.status_of("not json", 9)[0] == ""
    assert submit.positionals([".", "--run-config", "a=1", "conn", "--stream", "-c", "b=2"]) == [".", "conn"]


def test_the_confide_command_lists_submit_and_site_status(capsys: pytest.CaptureFixture[str]) -> None:
    """Proves both subcommands are reachable from `confide` with their help."""
    for name in ("submit", "site-status"):
        code = 0
        try:
            code = cli.main([name, "--help"])
        except SystemExit as exc:  # argparse's --help
            code = int(exc.code or 0)
        assert code == 0
        assert f"confide {name}" in capsys.readouterr().out
    assert cli.main(["submit"]) == 2
