"""Bad input to scripts/run-local.sh, through its first step ``python -m simulations.run_local
prepare EXPERIMENT "OVERRIDES"`` (in-process): every case is refused before any Flower process
starts, in one ``confide:`` line naming the key, file or override (harness: tests/one_line.py)."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.run_local import main
from tests.conftest import REPO
from tests.one_line import Case, directory, params, refused

pytestmark = pytest.mark.unit

DEFAULT = str(REPO / "simulations/configs/default.yaml")
TEXT = "name: t\nmodel: {name: bert}\ndata: {source: csv, path: train.csv, num_sites: 2}\nstrategy: {rounds: 1}\n"


def csv(labels: list[str]) -> str:
    return "text,label\n" + "".join(f"query number {i},{label}\n" for i, label in enumerate(labels))


def images(path) -> None:  # noqa: ANN001 - a writer
    from PIL import Image

    for label, side in (("a", 8), ("b", 12)):
        (path / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((side, side), np.uint8)).save(path / label / f"{i}.png")


def stopped_run(path) -> None:  # noqa: ANN001 - a writer
    """A stopped run of the default experiment at 2 rounds (round 1 checkpointed), as a run leaves it."""
    import json

    from common import checkpoint, config

    exp = config.load(DEFAULT, {"strategy.rounds": 2})
    path.mkdir()
    saved = checkpoint.Checkpoint(round=1, job="1", config=checkpoint.flat_config(exp), weights={})
    checkpoint.write(path / checkpoint.FILE, saved)
    (path / "metrics.jsonl").write_text("".join(json.dumps({"round": r}) + "\n" for r in (0, 1)))


def prep(*args: str) -> tuple[str, ...]:
    return ("prepare", *args)


# fmt: off
CASES = [
    Case("no-subcommand", (), ("required", "command")),
    Case("unknown-subcommand", ("start", DEFAULT), ("invalid choice", "'start'")),
    Case("experiment-missing", prep("nope.yaml"), ("experiment file not found", "nope.yaml")),
    Case("experiment-a-folder", prep("cfg"), ("experiment file cfg", "directory"), {"cfg": directory}),
    Case("experiment-not-yaml", prep("e.yaml"), ("e.yaml", "not valid YAML"), {"e.yaml": "train: [0.1\n"}),
    Case("experiment-empty", prep("e.yaml"), ("e.yaml", "empty"), {"e.yaml": ""}),
    Case("experiment-repeated-key", prep("e.yaml"), ("'rounds' appears twice",),
         {"e.yaml": "strategy:\n  rounds: 1\n  rounds: 9\n"}),
    Case("override-unknown-key", prep(DEFAULT, "train.lrr=0.1"), ("'train.lrr'", "did you mean 'train.lr'")),
    Case("override-not-a-pair", prep(DEFAULT, "strategy.rounds"), ("'strategy.rounds' is not key=value",)),
    Case("override-wrong-type", prep(DEFAULT, "train.lr=fast"), ("'train.lr'", "number")),
    Case("override-out-of-range", prep(DEFAULT, "strategy.rounds=0"), ("'strategy.rounds'", ">= 1")),
    Case("privacy-key-without-mode", prep(DEFAULT, "privacy.target_epsilon=8"),
         ("'privacy.target_epsilon'", "privacy.mode is 'off'")),
    Case("delta-vacuous", prep(DEFAULT, "privacy.mode='local' privacy.delta=0.5"), ("'privacy.delta'=0.5", "1/n")),
    Case("data-file-missing", prep("e.yaml"), ("data file not found", "train.csv"), {"e.yaml": TEXT}),
    Case("one-label-csv", prep("e.yaml"), ("every record has the label 'card'",),
         {"e.yaml": TEXT, "train.csv": csv(["card"] * 12)}),
    Case("negative-label-csv", prep("e.yaml"), ("record 2", "negative"),
         {"e.yaml": TEXT, "train.csv": csv(["0", "1", "-1", "0", "1", "0"])}),
    Case("mixed-image-sizes", prep(DEFAULT, "data.source='imagefolder' data.path=imgs model.name='resnet8'"),
         ("images have different sizes", "data.image_size"), {"imgs": images}),
    Case("weights-missing", prep(DEFAULT, "model.weights=w.pt"), ("'model.weights'", "w.pt")),
    Case("output-dir-a-file", prep(DEFAULT, "output_dir=runs"), ("'output_dir'", "is a file"), {"runs": "x"}),
    Case("resume-missing", prep(DEFAULT, "resume=runs/gone.incomplete"), ("gone.incomplete",)),
    Case("resume-changed-experiment", prep(DEFAULT, "strategy.rounds=2 train.lr=0.5 resume=r.incomplete"),
         ("resume:", "belongs to another experiment", "train.lr"), {"r.incomplete": stopped_run}),
]
# fmt: on


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input_is_refused_before_flower_starts(case: Case, tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("CONFIDE_ROOT", str(tmp_path))
    refused(main, case, tmp_path, monkeypatch, capsys)
