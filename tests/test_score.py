"""The scorer (simulations/score.py, ``confide-score``): its prediction CSV's columns (an id, the
text for text data, true and predicted label, one probability per class) and the ROC AUC it
prints for two-label tasks, on untrained exports (the smallest models the export tests use)."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from common import config as config_mod
from common.data import LabelSet
from common.export import save_model
from common.models import create_model
from simulations.score import main, score

pytestmark = pytest.mark.unit

TEXTS = ["is my card lost", "send money to my landlord today", "hello, there", "where is my refund"]


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mean-pooled MiniLM classifier for labels no,yes, saved as a run would export it."""
    keys = {"model.name": "bert", "model.pooling": "mean", "data.source": "synthetic_text", "data.labels": "no,yes"}
    exp = config_mod.load(None, keys)
    folder = tmp_path_factory.mktemp("bert") / "model"
    save_model(create_model(exp.model, 2, seed=1), exp, LabelSet(exp.data.labels), folder)
    return folder


def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "test.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "text", "label"])
        writer.writerows(zip(["A7", "B2", "C3", "D9"], TEXTS, ["no", "yes", "no", "yes"]))
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_text_predictions_carry_the_id_column_the_text_and_class_probabilities(
    bert_export: Path, tmp_path: Path
) -> None:
    """With --id-field case_id the CSV's columns are id, text, label, predicted, p_no, p_yes; each
    row's id and text are its record's; the probabilities sum to 1 and the predicted label is
    the likelier one. The printed roc_auc is the share of (yes, no) record pairs in which the yes
    record has the larger p_yes, counted here pair by pair."""
    out = tmp_path / "pred.csv"
    result = score(bert_export, text_file(tmp_path), out=out, id_field="case_id")
    rows = read_rows(out)
    assert list(rows[0]) == ["id", "text", "label", "predicted", "p_no", "p_yes"]
    assert [r["id"] for r in rows] == ["A7", "B2", "C3", "D9"] and [r["text"] for r in rows] == TEXTS
    for r in rows:
        p_no, p_yes = float(r["p_no"]), float(r["p_yes"])
        assert p_no + p_yes == pytest.approx(1.0, abs=1e-6)
        assert r["predicted"] == ("yes" if p_yes > p_no else "no")
    yes = [float(r["p_yes"]) for r in rows if r["label"] == "yes"]
    no = [float(r["p_yes"]) for r in rows if r["label"] == "no"]
    pairs = [1.0 if y > n else 0.5 if y == n else 0.0 for y, n in itertools.product(yes, no)]
    assert result["records"] == 4 and result["roc_auc"] == pytest.approx(sum(pairs) / 4, abs=1e-6)


def test_no_text_flag_and_row_number_ids_from_the_command_line(
    bert_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --id-field the id is the record's 0-based row in the file; --no-text leaves the
    text out; the printed JSON holds roc_auc for this two-label model."""
    out = tmp_path / "pred.csv"
    assert main([str(bert_export), str(text_file(tmp_path)), "--no-text", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"records", "accuracy", "macro_f1", "loss", "roc_auc"} <= set(printed)
    rows = read_rows(out)
    assert list(rows[0]) == ["id", "label", "predicted", "p_no", "p_yes"]
    assert [r["id"] for r in rows] == ["0", "1", "2", "3"]


def test_an_unknown_id_field_is_refused_naming_the_columns(bert_export: Path, tmp_path: Path) -> None:
    """--id-field naming no column stops the scorer (exit 2) before any prediction is written."""
    out = tmp_path / "pred.csv"
    assert main([str(bert_export), str(text_file(tmp_path)), "--id-field", "patient", "--out", str(out)]) == 2
    assert not out.exists()


def test_image_predictions_have_row_ids_no_text_and_no_auc_for_three_labels(tmp_path: Path) -> None:
    """A 3-label ResNet scored on an npz test split: ids 0..n-1, no text column, p_a, p_b, p_c per
    row, and no roc_auc (it is defined here for two labels only); --id-field is refused for an
    npz file, which has no named columns."""
    exp = config_mod.load(None, {"data.labels": "a,b,c"})
    save_model(create_model(exp.model, 3, seed=2), exp, LabelSet(exp.data.labels), tmp_path / "m")
    npz = tmp_path / "scans.npz"
    images = np.random.default_rng(0).integers(0, 255, (5, 8, 8), np.uint8)
    np.savez(npz, test_images=images, test_labels=np.array(["a", "b", "c", "a", "b"]))
    out = tmp_path / "pred.csv"
    result = score(tmp_path / "m", npz, out=out)
    rows = read_rows(out)
    assert list(rows[0]) == ["id", "label", "predicted", "p_a", "p_b", "p_c"]
    assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4"] and [r["label"] for r in rows] == list("abcab")
    assert all(sum(float(r[f"p_{c}"]) for c in "abc") == pytest.approx(1.0, abs=1e-6) for r in rows)
    assert "roc_auc" not in result
    assert main([str(tmp_path / "m"), str(npz), "--id-field", "case"]) == 2


def test_a_personalised_export_needs_a_sites_own_head(tmp_path: Path, capsys) -> None:
    """The export of a job with strategy.personalize 'head' carries the coordinator's untrained head:
    scoring it alone is refused in one line naming --head; with a site's head file the scorer uses
    that head (a head that predicts one class for every image scores that class's share)."""
    import torch

    from common.personalize import save_head

    exp = config_mod.load(None, {"data.labels": "a,b", "model.name": "resnet8", "strategy.personalize": "head"})
    model = create_model(exp.model, 2, seed=3)
    save_model(model, exp, LabelSet(exp.data.labels), tmp_path / "m")
    npz = tmp_path / "scans.npz"
    images = np.random.default_rng(0).integers(0, 255, (5, 8, 8), np.uint8)
    np.savez(npz, test_images=images, test_labels=np.array(["a", "b", "b", "a", "b"]))
    assert main([str(tmp_path / "m"), str(npz)]) == 2
    assert "--head" in capsys.readouterr().err
    with torch.no_grad():  # the site's head: always "b"
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([-5.0, 5.0]))
    save_head(model, tmp_path / "job-1.head.pt")
    assert score(tmp_path / "m", npz, head=tmp_path / "job-1.head.pt")["accuracy"] == pytest.approx(0.6)
    assert main([str(tmp_path / "m"), str(npz), "--head", str(tmp_path / "missing.pt")]) == 2
