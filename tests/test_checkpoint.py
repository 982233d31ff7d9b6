"""The coordinator's checkpoint (common/checkpoint.py) and the resume checks on a run folder
(common/rundir.py): what is written is what is read back, bit for bit, random states included;
a torn, foreign or older file is refused naming it; a checkpoint of another experiment is refused
naming the keys that differ; the history is cut back to the checkpoint's round."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from common import checkpoint as ckpt_mod
from common import config as config_mod
from common.checkpoint import Checkpoint
from common.errors import ConfigError
from common.rundir import FAILED, RESUMES, check_resumable, open_resumed

pytestmark = pytest.mark.unit


def _exp(**overrides):
    return config_mod.load(None, {"data.labels": "0,1,2", "strategy.rounds": 5, **overrides})


def _checkpoint(exp, round_: int = 2) -> Checkpoint:
    rng = np.random.default_rng(0)
    weights = {"w": rng.normal(size=(3, 4)).astype(np.float32), "n": np.array(7, dtype=np.int64)}
    return Checkpoint(
        round=round_,
        job="1234",
        config=ckpt_mod.flat_config(exp),
        weights=weights,
        server_state={"momentum/w": rng.normal(size=(3, 4)).astype(np.float32)},
        best=(0.75, 1, {k: v * 2 for k, v in weights.items()}),
        rng=ckpt_mod.capture_rng(),
    )


def _folder(tmp_path: Path, exp, rounds_logged: int, round_: int = 2) -> Path:
    folder = tmp_path / "20261202-000000-x-1234.incomplete"
    folder.mkdir()
    ckpt_mod.write(folder / ckpt_mod.FILE, _checkpoint(exp, round_))
    lines = [json.dumps({"round": r, "run_id": "1234"}) for r in range(rounds_logged + 1)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_round_trip_is_exact_including_random_states(tmp_path: Path) -> None:
    exp = _exp()
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    saved = _checkpoint(exp)
    ckpt_mod.write(tmp_path / "c.pt", saved)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())  # drawn after the capture
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    back = ckpt_mod.read(tmp_path / "c.pt")
    assert (back.round, back.job, back.config) == (2, "1234", saved.config)
    for got, want in ((back.weights, saved.weights), (back.server_state, saved.server_state)):
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k])
    assert back.best is not None and back.best[:2] == (0.75, 1)
    assert np.array_equal(back.best[2]["w"], saved.weights["w"] * 2)
    ckpt_mod.restore_rng(back.rng)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert sorted(p.name for p in tmp_path.iterdir() if "c.pt" in p.name) == ["c.pt"]  # no temp file left


@pytest.mark.parametrize(
    "content, needle",
    [(b"", "cannot be read"), (b"PK\x03\x04 torn", "cannot be read"), (None, "format 1")],
)
def test_unreadable_or_foreign_checkpoints_are_refused(tmp_path: Path, content: bytes | None, needle: str) -> None:
    path = tmp_path / "checkpoint.pt"
    if content is None:  # the format before resume existed
        torch.save({"format": 1, "round": 1, "state_dict": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=needle) as info:
        ckpt_mod.read(path)
    assert str(path) in str(info.value)


def test_another_experiment_is_refused_naming_the_keys(tmp_path: Path) -> None:
    folder = _folder(tmp_path, _exp(), rounds_logged=2)
    with pytest.raises(ConfigError) as info:
        check_resumable(folder, _exp(**{"model.name": "resnet8", "train.lr": 0.5}))
    message = str(info.value)
    assert "2 key(s) differ" in message and "model.name: 'resnet18' -> 'resnet8'" in message and "train.lr" in message
    with pytest.raises(ConfigError, match="data.labels"):
        check_resumable(folder, _exp(**{"data.labels": "0,1,3"}))
    with pytest.raises(ConfigError, match="strategy.rounds=1 but the checkpoint already closed round 2"):
        check_resumable(folder, _exp(**{"strategy.rounds": 1}))
    # more rounds, another timeout or thread count: the same experiment
    check_resumable(folder, _exp(**{"strategy.rounds": 8, "strategy.round_timeout": 10.0, "train.threads": 2}))


def test_only_stopped_run_folders_resume(tmp_path: Path) -> None:
    exp = _exp()
    with pytest.raises(ConfigError, match="does not exist"):
        check_resumable(tmp_path / "nope.incomplete", exp)
    done = tmp_path / "20261202-000000-x-1"
    done.mkdir()
    with pytest.raises(ConfigError, match="not a stopped run"):
        check_resumable(done, exp)
    early = tmp_path / "20261202-000000-x-2.incomplete"
    early.mkdir()
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        check_resumable(early, exp)
    short = _folder(tmp_path, exp, rounds_logged=1)  # checkpoint says round 2, the log ends at 1
    with pytest.raises(ConfigError, match="does not hold every round"):
        check_resumable(short, exp)


def test_open_resumed_cuts_the_history_back_and_keeps_why_it_stopped(tmp_path: Path) -> None:
    exp = _exp()
    folder = _folder(tmp_path, exp, rounds_logged=3)  # round 3 logged, its checkpoint never written
    with (folder / "metrics.jsonl").open("a") as f:
        f.write('{"round": 4, "cut')  # a line torn by the crash
    (folder / FAILED).write_text("killed\n")
    run_dir, checkpoint, history = open_resumed(folder, exp, "999")
    assert checkpoint.round == 2 and [h["round"] for h in history] == [0, 1, 2]
    assert [json.loads(x)["round"] for x in (folder / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert not (folder / FAILED).exists()
    record = json.loads((folder / RESUMES).read_text())
    assert record["stopped_because"] == "killed" and record["run_id"] == "999" and record["from_round"] == 2
    assert run_dir.path == folder and run_dir.final.name == "20261202-000000-x-1234"
