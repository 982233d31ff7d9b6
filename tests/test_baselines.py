"""The non-federated baselines (benchmarks/baselines.py): they learn, and they use the project's split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import _util
from benchmarks import baselines as bl
from common import config as config_mod
from common.data import RawData, label_set, read_test, read_train
from common.errors import ConfigError, DataError
from common.partition import partition_indices
from common.site import SiteSpec, site_records
from tests.conftest import shared_file

WORDS = {
    "card": ["card", "pin", "atm", "declined"],
    "transfer": ["transfer", "iban", "wire", "payee"],
    "refund": ["refund", "return", "merchant", "dispute"],
}
FILLER = ["please", "help", "my", "the", "today", "why", "is", "a", "i", "need"]


def write_text_csv(path: Path, n: int, seed: int) -> Path:
    """n queries over 3 intents, each with two of its intent's words among filler words (separable)."""
    rng = np.random.default_rng(seed)
    lines = ["text,category"]
    names = sorted(WORDS)
    for i in range(n):
        label = names[i % len(names)]
        words = list(rng.choice(FILLER, size=4)) + list(rng.choice(WORDS[label], size=2, replace=False))
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def text_experiment(tmp_path: Path, **overrides: object) -> config_mod.ExperimentConfig:
    write_text_csv(tmp_path / "train.csv", 90, seed=1)
    write_text_csv(tmp_path / "test.csv", 45, seed=2)
    base = {
        "model.name": "bert",
        "data.source": "csv",
        "data.path": "train.csv",  # relative: resolved against $CONFIDE_ROOT (the test's tmp folder)
        "data.test_path": "test.csv",
        "data.label_field": "category",
        "data.num_sites": 3,
        "data.partitioner": "iid",
        "strategy.min_sites": 2,
    }
    return config_mod.load(None, {**base, **overrides})


def digits_experiment(**overrides: object) -> config_mod.ExperimentConfig:
    base = {"data.num_sites": 3, "strategy.min_sites": 2, "data.partitioner": "dirichlet", "data.alpha": 0.5}
    return config_mod.load(None, {**base, **overrides})


@pytest.mark.unit
def test_text_baseline_learns_separable_csv(tmp_path: Path) -> None:
    """TF-IDF + logistic regression reaches near-perfect accuracy on separable queries (chance is 1/3),
    trains on every record of the training file and tests on the configured test file."""
    exp = text_experiment(tmp_path)
    out = bl.baseline(exp)
    assert out["method"] == "tfidf+logreg"
    assert out["accuracy"] >= 0.9 and out["macro_f1"] >= 0.9
    assert out["train_records"] == len(read_train(exp.data).raw_labels) == 90
    assert out["test_records"] == len(read_test(exp.data).raw_labels) == 45
    assert out["C"] in bl.C_GRID and set(out["validation_accuracy_by_C"]) == {str(c) for c in bl.C_GRID}
    single = out["single_site"]
    assert len(single["sites"]) == 3 and single["worst_accuracy"] <= single["mean_accuracy"]
    assert single["mean_accuracy"] > 0.5


@pytest.mark.sim
def test_image_baseline_learns_digits() -> None:
    """Logistic regression on raw pixels of the built-in digits (no files) is far above chance (0.1),
    on exactly the records read_train / read_test give the federated runs."""
    exp = digits_experiment()
    out = bl.baseline(exp)
    assert out["method"] == "pixels+logreg"
    assert out["accuracy"] > 0.9
    assert out["train_records"] == len(read_train(exp.data).raw_labels)
    assert out["test_records"] == len(read_test(exp.data).raw_labels)
    assert out["num_labels"] == 10 and out["converged"]
    assert 0.0 < out["single_site"]["worst_accuracy"] <= out["single_site"]["mean_accuracy"] <= 1.0


@pytest.mark.sim
def test_single_site_uses_the_experiments_partition() -> None:
    """The single-site models train on the partition a simulated site gets (common.site.site_records:
    its train plus held-out records), site by site, and together the sites cover the training file."""
    exp = digits_experiment()
    out = bl.baseline(exp)
    train, _, _ = bl.load_split(exp)
    parts = partition_indices(train.labels, exp.data, exp.seed)
    names = label_set(exp.data, read_train(exp.data))  # derived from the training data, as a run does
    for i, site in enumerate(out["single_site"]["sites"]):
        spec = SiteSpec(name=f"site-{i}", partition_id=i, num_partitions=exp.data.num_sites)
        site_train, site_val = site_records(exp, spec, names)
        assert site["records"] == len(parts[i]) == len(site_train) + len(site_val)
    assert sum(s["records"] for s in out["single_site"]["sites"]) == out["train_records"]


@pytest.mark.unit
def test_max_samples_limits_training_like_the_runs() -> None:
    """data.max_samples caps the baseline's training records exactly as read_train caps a run's."""
    out = bl.baseline(digits_experiment(**{"data.max_samples": 300}))
    assert out["train_records"] == 300


@pytest.mark.unit
def test_baseline_is_deterministic() -> None:
    """Same experiment, same numbers: the validation split and partition are seeded by exp.seed."""
    exp = digits_experiment(**{"data.max_samples": 400})
    a, b = bl.baseline(exp), bl.baseline(exp)
    keys = ("accuracy", "macro_f1", "C", "validation_accuracy_by_C")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert a["single_site"]["sites"] == b["single_site"]["sites"]


@pytest.mark.unit
def test_one_class_site_predicts_its_class(tmp_path: Path) -> None:
    """A site whose data holds a single class cannot fit logistic regression; it predicts that class."""
    exp = text_experiment(tmp_path)
    one = RawData(labels=np.array([2, 2, 2]), texts=("a b", "c d", "e f"))
    test = RawData(labels=np.array([0, 2]), texts=("x", "y"))
    pred, converged = bl._fit_predict(exp, one, test, 1.0)
    assert pred.tolist() == [2, 2] and converged


@pytest.mark.unit
def test_missing_files_raise_project_errors(tmp_path: Path) -> None:
    """A missing training file raises DataError naming it; a source without a test split raises ConfigError."""
    exp = text_experiment(tmp_path, **{"data.path": "nowhere.csv"})
    with pytest.raises(DataError, match="nowhere.csv"):
        bl.baseline(exp)
    no_test = text_experiment(tmp_path, **{"data.test_path": ""})
    with pytest.raises(ConfigError, match="data.test_path"):
        bl.baseline(no_test)


@pytest.mark.unit
def test_cli_reports_a_clean_error_for_a_missing_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI turns a missing dataset into one 'confide:' line naming the file, exit status 2."""
    rc = bl.main(["--task", "pneumonia", "--set", "data.path=/nonexistent/pneumoniamnist.npz"])
    assert rc == 2
    assert "/nonexistent/pneumoniamnist.npz" in capsys.readouterr().err


@pytest.mark.unit
def test_cli_on_real_pneumonia_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the real PneumoniaMNIST (skipped when ../shared/datasets is absent), the CLI runs the
    experiment's config, prints the table and saves a JSON result with the baseline's fields."""
    npz = shared_file("pneumoniamnist/pneumoniamnist.npz")
    monkeypatch.setattr(_util, "RESULTS", tmp_path / "results")
    rc = bl.main(["--task", "pneumonia", "--set", f"data.path={npz}", "--set", "data.max_samples=600"])
    assert rc == 0
    assert "pixels+logreg" in capsys.readouterr().out
    (saved,) = (tmp_path / "results").glob("baselines-pneumonia-*.json")
    payload = json.loads(saved.read_text())
    assert payload["train_records"] == 600 and payload["test_records"] == 624
    assert payload["accuracy"] > 0.625  # above the majority class of the test split (390 / 624)
    assert len(payload["single_site"]["sites"]) == 5
