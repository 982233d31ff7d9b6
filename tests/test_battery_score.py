"""``confide score`` (simulations/score.py) refuses a model folder, data file or option that does
not fit, in one line, before it predicts anything (the contract in tests/one_line.py).

The exports are untrained (the smallest models the export tests use): a ResNet-8 for scikit-learn's
8x8 one-channel digits, labels 0, 1, 2, and a mean-pooled MiniLM for labels no, yes. Each case is
one mistake a new user makes: images of another size, channel count or bit depth (which the
network would otherwise turn into confident, meaningless predictions), labels the model never saw,
an --out that cannot be written, a damaged model.pt. The last tests prove what is accepted: --resize
scales images to the trained size, and scoring never logs the builder's "random init" note.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from common import config as config_mod
from common.data import LabelSet
from common.export import save_model
from common.models import create_model
from simulations.score import main
from tests.one_line import Case, directory, params, refused

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)
LABELS = [0, 1, 2, 0]


def export(folder: Path, labels: str, **keys: object) -> Path:
    exp = config_mod.load(None, {**keys, "data.labels": labels})
    save_model(create_model(exp.model, len(exp.data.labels), seed=1), exp, LabelSet(exp.data.labels), folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "img": export(root / "img", "0,1,2", **{"model.name": "resnet8", "data.source": "digits"}),
        "npzimg": export(
            root / "npzimg", "0,1,2", **{"model.name": "resnet8", "data.source": "npz", "data.path": "train.npz"}
        ),  # fmt: skip
        "txt": export(
            root / "txt", "no,yes", **{"model.name": "bert", "model.pooling": "mean", "data.source": "synthetic_text"}
        ),  # fmt: skip
    }


def npz(images: np.ndarray, labels: list[int] = LABELS) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with path.open("wb") as f:
            np.savez(f, test_images=images, test_labels=np.array(labels).reshape(-1, 1))

    return write


def pixels(side: int = 8, *tail: int) -> np.ndarray:
    return RNG.integers(0, 256, (4, side, side, *tail), dtype=np.uint8)


def copy_of(name: str, *, drop: str = "", add: dict[str, bytes] | None = None) -> Callable[[Path], None]:
    """A copy of a fixture's export (``{name}`` is filled in by the test) with a file removed or replaced."""

    def write(path: Path) -> None:
        shutil.copytree(COPY_FROM[name], path)
        if drop:
            (path / drop).unlink()
        for file, content in (add or {}).items():
            (path / file).write_bytes(content)

    return write


COPY_FROM: dict[str, Path] = {}  # filled by the test from the module's fixture


def other_shapes(path: Path) -> None:
    """An export whose model.pt holds another network's tensors (a 5-label head)."""
    import torch

    shutil.copytree(COPY_FROM["img"], path)
    torch.save(create_model(config_mod.load(None, {"model.name": "resnet8"}).model, 5).state_dict(), path / "model.pt")


GOOD = {"t.npz": npz(pixels())}
CSV = "text,label\nis my card lost,no\nsend money,yes\n"

# fmt: off
CASES = [
    # ------------------------------------------------------------------ the arguments
    Case("no-arguments", (), ("model", "data", "required")),
    Case("unknown-flag", ("{img}", "t.npz", "--bogus"), ("--bogus",), GOOD),
    Case("source-unknown", ("{img}", "t.npz", "--source", "xlsx"), ("--source", "'xlsx'"), GOOD),
    Case("split-unknown", ("{img}", "t.npz", "--split", "val"), ("--split", "'val'"), GOOD),
    # ------------------------------------------------------------------ the model folder
    Case("model-folder-missing", ("nomodel", "t.npz"), ("model folder not found", "nomodel"), GOOD),
    Case("model-folder-is-a-file", ("m.txt", "t.npz"), ("model folder m.txt", "is a file"), {**GOOD, "m.txt": "x"}),
    Case("model-folder-without-confide-yaml", ("m", "t.npz"), ("confide.yaml", "m"), {**GOOD, "m": directory}),
    Case("confide-yaml-not-yaml", ("m", "t.npz"), ("m/confide.yaml", "unreadable"),
         {**GOOD, "m/confide.yaml": "labels: [0, 1\n"}),
    Case("confide-yaml-without-labels", ("m", "t.npz"), ("m/confide.yaml", "'labels'"),
         {**GOOD, "m/confide.yaml": "experiment: {}\n"}),
    Case("model-pt-corrupt", ("m", "t.npz"), ("m/model.pt", "not a readable model weights file"),
         {**GOOD, "m": copy_of("img", add={"model.pt": b"PK\x03\x04 this is not torch"})}),
    Case("model-pt-missing", ("m", "t.npz"), ("m/model.pt", "not found"),
         {**GOOD, "m": copy_of("img", drop="model.pt")}),
    Case("model-pt-of-another-network", ("m", "t.npz"), ("m/model.pt", "does not fit", "confide.yaml"),
         {**GOOD, "m": other_shapes}),
    # ------------------------------------------------------------------ the data file
    Case("data-missing", ("{img}", "nope.npz"), ("data file not found", "nope.npz")),
    Case("data-format-unknown", ("{img}", "scans.dat"), ("scans.dat", "--source"), {"scans.dat": "x"}),
    Case("npz-not-an-archive", ("{img}", "t.npz"), ("t.npz", "not an .npz archive"), {"t.npz": b"hello"}),
    Case("images-28x28-into-8x8", ("{img}", "t.npz"), ("t.npz", "28x28", "8x8", "--resize"),
         {"t.npz": npz(pixels(28))}),
    Case("images-rgb-into-one-channel", ("{img}", "t.npz"), ("t.npz", "RGB", "3 channels", "1-channel"),
         {"t.npz": npz(pixels(8, 3))}),
    Case("images-12-bit", ("{img}", "t.npz"), ("t.npz", "uint16", "4000", "--pixel-max", "4095 for 12-bit"),
         {"t.npz": npz(np.full((4, 8, 8), 4000, dtype=np.uint16))}),
    Case("images-float-0-to-200", ("{img}", "t.npz"), ("t.npz", "floats up to 199.5", "--pixel-max"),
         {"t.npz": npz(np.full((4, 8, 8), 199.5, dtype=np.float32))}),
    Case("images-negative", ("{img}", "t.npz"), ("t.npz", "negative values", "int16"),
         {"t.npz": npz(np.full((4, 8, 8), -50, dtype=np.int16))}),
    Case("images-nan", ("{img}", "t.npz"), ("t.npz", "non-finite"),
         {"t.npz": npz(np.full((4, 8, 8), np.nan, dtype=np.float32))}),
    Case("pixels-above-pixel-max", ("{img}", "t.npz", "--pixel-max", "1000"), ("t.npz", "4000", "--pixel-max", "1000"),
         {"t.npz": npz(np.full((4, 8, 8), 4000, dtype=np.uint16))}),
    Case("pixel-max-negative", ("{img}", "t.npz", "--pixel-max", "-1"), ("--pixel-max -1", ">= 0"), GOOD),
    Case("pixel-max-not-a-number", ("{img}", "t.npz", "--pixel-max", "white"), ("--pixel-max", "'white'"), GOOD),
    Case("labels-outside-the-model", ("{img}", "t.npz"),
         ("t.npz", "2 of 4 records", "label set [0, 1, 2]", "'7' (1)", "'9' (1)", "test_labels"),
         {"t.npz": npz(pixels(), [0, 1, 7, 9])}),
    Case("resize-without-a-recorded-size", ("{npzimg}", "t.npz", "--resize"), ("--resize", "image size"), GOOD),
    Case("image-model-on-a-table", ("{img}", "t.csv"), ("t.csv", "reads images"), {"t.csv": CSV}),
    Case("label-field-on-images", ("{img}", "t.npz", "--label-field", "y"), ("--label-field 'y'", "table"), GOOD),
    Case("id-field-on-images", ("{img}", "t.npz", "--id-field", "case"), ("--id-field 'case'", "table"), GOOD),
    # ------------------------------------------------------------------ --out
    Case("out-in-a-missing-folder", ("{img}", "t.npz", "--out", "nodir/p.csv"), ("--out nodir/p.csv", "nodir"), GOOD),
    Case("out-an-existing-folder", ("{img}", "t.npz", "--out", "preds"), ("--out preds", "existing folder"),
         {**GOOD, "preds": directory}),
    Case("out-the-data-file", ("{txt}", "t.csv", "--out", "t.csv"), ("--out t.csv", "data file"), {"t.csv": CSV}),
    # ------------------------------------------------------------------ text
    Case("text-column-missing", ("{txt}", "t.csv"), ("t.csv", "'text'", "--text-field", "sentence"),
         {"t.csv": "sentence,label\nhello,no\n"}),
    Case("text-field-given-missing", ("{txt}", "t.csv", "--text-field", "body"), ("t.csv", "'body'", "--text-field"),
         {"t.csv": CSV}),
    Case("label-column-missing", ("{txt}", "t.csv"), ("t.csv", "'label'", "--label-field"),
         {"t.csv": "text,intent\nhello,no\n"}),
    Case("text-labels-outside-the-model", ("{txt}", "t.csv"),
         ("t.csv", "2 of 3 records", "'maybe' (1)", "'perhaps' (1)"),
         {"t.csv": "text,label\nhello,no\nbye,maybe\nok,perhaps\n"}),
    Case("text-model-on-images", ("{txt}", "t.npz"), ("t.npz", "reads text"), GOOD),
    Case("split-on-a-table", ("{txt}", "t.csv", "--split", "train"), ("--split train", ".npz"), {"t.csv": CSV}),
]
# fmt: on


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input_is_refused_in_one_line_before_any_prediction(
    case: Case,
    models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    COPY_FROM.update(models)
    refused(main, case, tmp_path, monkeypatch, capsys, **models)


def test_a_write_that_fails_after_the_checks_is_a_failed_run(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out passes its checks, then the write fails (here: the file cannot be opened): exit code 1,
    one line naming --out, no traceback."""
    from simulations import score as score_mod

    def unwritable(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(score_mod, "write_predictions", unwritable)
    npz(pixels())(tmp_path / "t.npz")
    assert main([str(models["img"]), str(tmp_path / "t.npz"), "--out", str(tmp_path / "p.csv")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("confide: could not write --out"), err
    assert "Permission denied" in err and "Traceback" not in err


def test_resize_scales_images_to_the_trained_size(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 28x28 images refused above are scored with --resize: all 4 records, exit 0."""
    data = tmp_path / "t.npz"
    npz(pixels(28))(data)
    assert main([str(models["img"]), str(data), "--resize"]) == 0
    assert '"records": 4' in capsys.readouterr().out


def test_pixel_max_reads_other_ranges_as_their_8_bit_values(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 12-bit images refused above score with --pixel-max 4095: images whose values are the 8-bit
    ones times 4095/255 (exact multiples) give the same scores as the 8-bit ones."""
    whole = np.array([0, 51, 102, 255], dtype=np.uint8)[RNG.integers(0, 4, (4, 8, 8))]
    twelve = (whole.astype(np.int64) * 4095 // 255).astype(np.uint16)  # 0, 819, 1638, 4095
    out = {}
    for name, images, extra in (("u8", whole, []), ("u12", twelve, ["--pixel-max", "4095"])):
        npz(images)(tmp_path / f"{name}.npz")
        assert main([str(models["img"]), str(tmp_path / f"{name}.npz"), *extra]) == 0
        out[name] = capsys.readouterr().out
    assert out["u8"] == out["u12"]


def test_scoring_does_not_log_random_init(
    models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """The exported weights replace every tensor: the model builder's 'no pretrained weights file
    given ...; random init' note describes another model and must not be logged."""
    npz(pixels())(tmp_path / "t.npz")
    with caplog.at_level(logging.INFO):
        assert main([str(models["img"]), str(tmp_path / "t.npz")]) == 0
    _, err = capsys.readouterr()
    assert "random init" not in caplog.text + err, caplog.text + err
