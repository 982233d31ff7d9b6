"""scripts/run-local.sh's Python side: overrides quoted for Flower, absolute paths, and the local
SuperLink named when it is another checkout's, environment's or user's (on a fake /proc)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.common.config import parse_config_args

from common.errors import ConfideError
from simulations import run_local
from simulations.run_local import SuperLink, check_superlink, find_superlinks, prepare

REPO = Path(__file__).resolve().parents[1]
DEFAULT = str(REPO / "simulations/configs/default.yaml")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "expected"),
    [("label", "'label'"), ("'label'", "'label'"), ('"a b"', '"a b"'), ("0.01", "0.01"), ("1e-4", "1e-4"),
     ("true", "true"), ("5", "5"), ("/data/x.csv", "'/data/x.csv'"), ("int8", "'int8'"), ("it's", '"it\'s"')],
)  # fmt: skip
def test_string_values_are_quoted_for_flowers_parser(value: str, expected: str) -> None:
    assert run_local.toml_value(value) == expected
    assert parse_config_args([f"k={expected}"])  # Flower accepts the result


@pytest.mark.unit
def test_prepare_quotes_and_makes_paths_absolute(project_root: Path) -> None:
    prepared = prepare(DEFAULT, "data.label_field=label train.lr=0.01 name=my-run")
    parsed = parse_config_args([prepared.run_config])
    assert prepared.sites == 3
    assert parsed["experiment"] == DEFAULT
    assert parsed["output_dir"] == str(project_root / "runs")  # $CONFIDE_ROOT, else this checkout
    assert parsed["data.label_field"] == "label" and parsed["train.lr"] == 0.01 and parsed["name"] == "my-run"


@pytest.mark.unit
def test_a_given_output_dir_is_kept_and_made_absolute(project_root: Path) -> None:
    parsed = parse_config_args([prepare(DEFAULT, "output_dir=elsewhere/runs").run_config])
    assert parsed["output_dir"] == str(project_root / "elsewhere" / "runs")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("overrides", "message"),
    [("train.lrr=0.1", "train.lrr"), ("strategy.rounds", "'strategy.rounds' is not key=value")],
)
def test_bad_overrides_are_refused_in_one_line(overrides: str, message: str) -> None:
    with pytest.raises(ConfideError, match=message):
        prepare(DEFAULT, overrides)


def _one_label_csv(root: Path) -> str:
    (root / "one.csv").write_text("text,label\n" + "".join(f"query {i},card\n" for i in range(12)))
    return f"experiment='{REPO}/simulations/configs/default_bert.yaml' data.path=one.csv data.source='csv'"


def _mixed_sizes(root: Path) -> str:
    from PIL import Image

    for label, side in (("a", 8), ("b", 12)):
        (root / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((side, side), np.uint8)).save(root / "imgs" / label / f"{i}.png")
    return "data.source='imagefolder' data.path=imgs"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_one_label_csv, "every record has the label 'card'"),
        (_mixed_sizes, "images have different sizes"),
        (lambda root: "privacy.mode='local' privacy.delta=0.5", "'privacy.delta'=0.5 must be below 1/n"),
    ],
    ids=["one-label-csv", "mixed-image-sizes", "delta-half"],
)
def test_prepare_checks_the_data_before_flower_starts(project_root: Path, build, message: str) -> None:  # noqa: ANN001
    """What the ServerApp would find only after Flower started (and print inside Flower's
    traceback) is refused by the script's first step, in one line."""
    with pytest.raises(ConfideError, match=message):
        prepare(DEFAULT, build(project_root))


@pytest.mark.system
def test_the_script_side_prints_sites_then_the_run_config(project_root: Path) -> None:
    env = {**os.environ, "CONFIDE_ROOT": str(project_root)}
    cmd = [sys.executable, "-m", "simulations.run_local", "prepare", DEFAULT, "data.label_field=label"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    sites, run_config = proc.stdout.splitlines()
    assert proc.returncode == 0 and sites == "3" and "data.label_field='label'" in run_config


def fake_process(proc: Path, pid: int, args: list[str], cwd: Path) -> None:
    entry = proc / str(pid)
    entry.mkdir(parents=True)
    (entry / "cmdline").write_bytes("\0".join(args).encode() + b"\0")
    (entry / "cwd").symlink_to(cwd)


def superlink_args(venv: Path, port: str = "39093") -> list[str]:
    script = str(venv / "bin" / "flower-superlink")
    return [str(venv / "bin" / "python3.11"), script, "--insecure", "--simulation", "--control-api-address",
            f"127.0.0.1:{port}", "--database", "/home/u/.flwr/local-superlink/state.db"]  # fmt: skip


@pytest.mark.unit
def test_find_superlinks_reads_folder_and_environment(tmp_path: Path) -> None:
    proc, other = tmp_path / "proc", tmp_path / "other-clone"
    other.mkdir()
    fake_process(proc, 4242, superlink_args(other / ".venv"), other)
    fake_process(proc, 4243, superlink_args(other / ".venv", port="9093"), other)  # not the local one
    fake_process(proc, 4244, ["python", "train.py"], other)
    (link,) = find_superlinks(proc, port="39093")
    assert link == SuperLink(4242, os.getuid(), other, other / ".venv" / "bin")


@pytest.mark.unit
def test_another_checkouts_superlink_is_named_with_what_to_do(tmp_path: Path) -> None:
    here, other = tmp_path / "here", tmp_path / "other"
    link = SuperLink(4242, os.getuid(), other, other / ".venv" / "bin")
    code, line = check_superlink([link], here, here / ".venv" / "bin", os.getuid())
    assert code == 0 and "pid 4242" in line and f"folder {other}" in line and f"Python {other}/.venv/bin" in line
    assert "superlink --stop" in line and "\n" not in line


@pytest.mark.unit
def test_own_superlink_gets_a_short_note_and_none_no_line(tmp_path: Path) -> None:
    link = SuperLink(4242, os.getuid(), tmp_path, tmp_path / ".venv" / "bin")
    code, line = check_superlink([link], tmp_path, tmp_path / ".venv" / "bin", os.getuid())
    assert code == 0 and "already running (pid 4242" in line
    assert check_superlink([], tmp_path, tmp_path, os.getuid()) == (0, "")


@pytest.mark.unit
def test_another_users_superlink_is_refused(tmp_path: Path) -> None:
    link = SuperLink(4242, os.getuid() + 1, None, None)
    code, line = check_superlink([link], tmp_path, tmp_path, os.getuid())
    assert code == 1 and "pid 4242" in line and "belongs to user" in line


@pytest.mark.unit
def test_file_paths_in_the_experiment_and_overrides_are_passed_absolute(project_root: Path) -> None:
    """A SuperLink started in another folder resolves relative paths against that folder; the run config
    carries them as this checkout reads them ($CONFIDE_ROOT, else the working directory). The files
    need not exist here (check=False): the paths alone are under test."""
    (project_root / "ckpt").mkdir()
    bert = str(REPO / "simulations/configs/bank_bert_banking77.yaml")
    prepared = prepare(bert, "data.test_path=held/out.csv model.checkpoint=ckpt", check=False)
    parsed = parse_config_args([prepared.run_config])
    assert parsed["data.path"] == str((project_root / "../shared/datasets/banking77/train.csv").resolve())  # the YAML's
    assert parsed["data.test_path"] == str(project_root / "held" / "out.csv")  # an override's
    assert parsed["model.checkpoint"] == str(project_root / "ckpt")  # a local folder
    hub_name = parse_config_args([prepare(bert, "", check=False).run_config])
    assert "model.checkpoint" not in hub_name  # all-MiniLM-L6-v2 is not a folder here: left as the YAML has it
    resnet = parse_config_args([prepare(DEFAULT, "model.weights=w/resnet18.pt", check=False).run_config])
    assert resnet["model.weights"] == str(project_root / "w" / "resnet18.pt")
