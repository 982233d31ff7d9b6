"""Experiment tracking (common/tracking.py, hooked into server/run.py and the sweep cells): what a run
logs to TensorBoard and MLflow, read back with TensorBoard's event reader and the MLflow client and
compared with values taken independently from the run's metrics.jsonl and the YAML the test wrote."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from common import config as config_mod
from common import tracking
from simulations.local import simulate
from simulations.study.cell import tracked
from simulations.study.sweep_spec import load_sweep

TINY = {
    "model.name": "resnet8",
    "data.num_sites": 2,
    "strategy.min_sites": 2,
    "strategy.rounds": 2,
    "data.max_samples": 200,
}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made once (seconds each time), copied where a test needs one."""
    path = tmp_path_factory.mktemp("store") / tracking.DEFAULT_DB
    _client(tracking.sqlite_uri(path)).search_experiments()
    return path


def _seed(store: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(store, folder / tracking.DEFAULT_DB)


def _lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _events(folder: Path):  # noqa: ANN202
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _client(uri: str):  # noqa: ANN202
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.mark.sim
@pytest.mark.slow
def test_a_tracked_run_logs_its_config_rounds_sites_privacy_and_artifacts(tmp_path: Path, empty_store: Path) -> None:
    """A 2-round local-DP run with both switches on: TensorBoard and MLflow hold each round's central
    accuracy, a site's held-out accuracy and its epsilon, and the bytes sent, equal to metrics.jsonl's;
    MLflow's params equal the YAML's values; the run ended FINISHED with the model card, the config and
    the exported model as artifacts, in the default SQLite store <output_dir>/mlflow.db."""
    experiment = tmp_path / "exp.yaml"
    yaml_values = {
        "name": "tracked-digits",
        "output_dir": str(tmp_path / "runs"),
        "train": {"lr": 0.003, "batch_size": 32},
        "privacy": {"mode": "local", "noise_multiplier": 1.0, "site_metrics": "exact"},
        "tracking": {"tensorboard": True, "mlflow": True},
    }
    experiment.write_text(yaml.safe_dump(yaml_values))
    _seed(empty_store, tmp_path / "runs")
    run = simulate(config_mod.load(experiment, TINY))
    lines = _lines(run)
    assert [x["round"] for x in lines] == [0, 1, 2]

    # TensorBoard: the event files in the run folder
    acc = _events(run / tracking.TB_DIR)
    central = {e.step: e.value for e in acc.Scalars("central/accuracy")}
    assert central == pytest.approx({x["round"]: x["central"]["accuracy"] for x in lines}, rel=1e-6)
    site_acc = {e.step: e.value for e in acc.Scalars("site/site-1/evaluate/accuracy")}
    assert site_acc == pytest.approx({r: lines[r]["sites"]["site-1"]["evaluate"]["accuracy"] for r in (1, 2)}, rel=1e-6)
    eps = acc.Scalars("privacy/site/site-0/epsilon")[-1]
    assert (eps.step, eps.value) == (2, pytest.approx(lines[2]["privacy"]["sites"]["site-0"]["epsilon"], rel=1e-6))
    assert "train/fraction_clipped" in acc.Tags()["scalars"]  # released here (site_metrics=exact)
    assert {"config/text_summary", "model_card/text_summary"} <= set(acc.Tags()["tensors"])

    # MLflow: the default store beside the run folders
    uri = tracking.sqlite_uri(tmp_path / "runs" / tracking.DEFAULT_DB)
    client = _client(uri)
    exp = client.get_experiment_by_name("tracked-digits")
    (found,) = client.search_runs([exp.experiment_id])
    assert json.loads((run / tracking.STATE).read_text())["mlflow_run_id"] == found.info.run_id
    assert found.info.status == "FINISHED" and found.info.run_name == run.name
    assert found.data.tags["confide.run_folder"] == str(run)
    p = found.data.params
    assert float(p["train.lr"]) == 0.003 and p["privacy.mode"] == "local" and p["privacy.site_metrics"] == "exact"
    assert p["model.name"] == "resnet8" and p["tracking.mlflow"] == "True"
    history = client.get_metric_history(found.info.run_id, "federated/accuracy")
    assert {m.step: m.value for m in history} == pytest.approx({r: lines[r]["federated"]["accuracy"] for r in (1, 2)})
    history = client.get_metric_history(found.info.run_id, "privacy/site/site-1/epsilon")
    assert {m.step: m.value for m in history}[2] == pytest.approx(lines[2]["privacy"]["sites"]["site-1"]["epsilon"])
    sent = sum(s["train"]["bytes_up"] for s in lines[2]["sites"].values())
    assert found.data.metrics["bytes/up_total"] == pytest.approx(sent)
    assert found.data.metrics["bytes/down_per_site"] == lines[2]["bytes_down_per_site"]
    top = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"MODEL_CARD.md", "config.yaml", "metrics.jsonl", "model"} <= top
    assert {a.path for a in client.list_artifacts(found.info.run_id, "model")} == {
        "model/confide.yaml",
        "model/model.pt",
    }
    assert exp.artifact_location.startswith((tmp_path / "runs" / tracking.ARTIFACTS_DIR).as_uri())


@pytest.mark.sim
@pytest.mark.slow
def test_with_tracking_off_nothing_is_written_and_neither_library_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default (both switches off): a run neither imports mlflow nor TensorBoard (an import of
    either would fail here and fail the run) and writes no event files, store or tracking state."""
    for name in ("mlflow", "tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    exp = config_mod.load(
        "simulations/configs/default.yaml",
        {**TINY, "strategy.rounds": 1, "data.num_sites": 1, "strategy.min_sites": 1, "data.max_samples": 100},
    )
    assert not exp.tracking.tensorboard and not exp.tracking.mlflow
    run = simulate(exp)
    assert not (run / tracking.TB_DIR).exists() and not (run / tracking.STATE).exists()
    leftovers = {p.name for p in run.parent.iterdir()} & {tracking.DEFAULT_DB, tracking.ARTIFACTS_DIR, "mlruns"}
    assert not leftovers
    assert not tracking.Tracker.open(exp, run).enabled


def _exp(tmp_path: Path, store: Path, **extra: object) -> config_mod.ExperimentConfig:
    _seed(store, tmp_path / "out")
    values = {"output_dir": str(tmp_path / "out"), "tracking.mlflow": True, "tracking.tensorboard": True, **extra}
    return config_mod.load("simulations/configs/default.yaml", values)


def _line(r: int, accuracy: float) -> dict:
    return {"round": r, "central": {"accuracy": accuracy}, "federated": {}, "sites": {}, "privacy": {"mode": "off"}}


@pytest.mark.unit
def test_a_stopped_run_ends_failed_and_its_resume_continues_the_same_mlflow_run(
    tmp_path: Path, empty_store: Path
) -> None:
    """Without the final ``finish`` (a run that stopped) the MLflow run ends FAILED; reopened as a
    resume of the same folder it is the same MLflow run again (id from tracking.json), RUNNING, then
    FINISHED with the new rounds; TensorBoard keeps one folder and every round once."""
    exp, folder = _exp(tmp_path, empty_store), tmp_path / "out" / "run.incomplete"
    folder.mkdir(parents=True)
    first = tracking.Tracker.open(exp, folder)
    for r in (0, 1):
        first.log_round(_line(r, 0.1 * (r + 1)))
    first.close()
    client = _client(tracking.mlflow_uri(exp))
    (stopped,) = client.search_runs([client.get_experiment_by_name(exp.name).experiment_id])
    assert stopped.info.status == "FAILED"

    second = tracking.Tracker.open(exp, folder, history=[_line(0, 0.1), _line(1, 0.2)], resumed=True)
    assert client.get_run(stopped.info.run_id).info.status == "RUNNING"
    second.log_round(_line(2, 0.3))
    second.finish(folder)
    second.close()
    run = client.get_run(stopped.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["confide.resumed_from_round"] == "1"
    history = client.get_metric_history(run.info.run_id, "central/accuracy")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(0, 0.1), (1, 0.2), (2, 0.3)]
    scalars = _events(folder / tracking.TB_DIR).Scalars("central/accuracy")
    assert sorted((e.step, round(e.value, 6)) for e in scalars) == [(0, 0.1), (1, 0.2), (2, 0.3)]


@pytest.mark.unit
def test_a_resume_without_a_stored_run_id_starts_a_tagged_run_with_the_rounds_so_far(
    tmp_path: Path, empty_store: Path
) -> None:
    """Tracking turned on only when a stopped run is resumed (tracking keys may differ on resume):
    a new MLflow run tagged as a resume from round 1, holding the earlier rounds too."""
    exp, folder = _exp(tmp_path, empty_store, **{"tracking.tensorboard": False}), tmp_path / "out" / "run.incomplete"
    folder.mkdir(parents=True)
    tracker = tracking.Tracker.open(exp, folder, history=[_line(0, 0.1), _line(1, 0.2)], resumed=True)
    tracker.close()
    client = _client(tracking.mlflow_uri(exp))
    (run,) = client.search_runs([client.get_experiment_by_name(exp.name).experiment_id])
    assert run.data.tags["confide.resumed_from_round"] == "1" and run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "central/accuracy")] == [0, 1]
    assert not (folder / tracking.TB_DIR).exists()


@pytest.mark.unit
def test_every_cell_of_a_sweep_logs_to_one_mlflow_experiment_and_store(tmp_path: Path) -> None:
    """A sweep with tracking.mlflow on: each cell's experiment points at the sweep's store
    (<out>/mlflow.db) and experiment (the sweep's name), so two cells' runs land side by side; and
    turning tracking on does not change the cells' ids (finished cells are not run again)."""
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-sweep",
                "base": str(Path("simulations/configs/default.yaml").resolve()),
                "grid": {"train.lr": [0.01, 0.02]},
            }
        )
    )
    plain = load_sweep(spec)
    sweep = load_sweep(spec, {"tracking.mlflow": True})
    assert [c.id for c in sweep.cells] == [c.id for c in plain.cells]
    out = tmp_path / "sweep-out"
    cells = [tracked(c.exp, sweep, out) for c in sweep.cells]
    assert {(e.tracking.mlflow_uri, e.tracking.mlflow_experiment) for e in cells} == {
        (tracking.sqlite_uri(out / "mlflow.db"), "tiny-sweep")
    }
    assert tracked(plain.cells[0].exp, plain, out) == plain.cells[0].exp
    for i, exp in enumerate(cells):
        folder = out / "cells" / sweep.cells[i].id / "runs" / "run"
        folder.mkdir(parents=True)
        tracker = tracking.Tracker.open(exp, folder)
        tracker.log_round(_line(0, 0.5))
        tracker.finish(folder)
        tracker.close()
    client = _client(tracking.sqlite_uri(out / "mlflow.db"))
    runs = client.search_runs([client.get_experiment_by_name("tiny-sweep").experiment_id])
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.01", "0.02"]


@pytest.mark.unit
def test_round_scalars_names_every_section_and_leaves_out_what_is_not_a_number() -> None:
    """The flat names of one metrics.jsonl line: sections, per-site phases, per-site privacy, bytes."""
    line = {
        "round": 3,
        "wall_seconds": 2.0,
        "slowest_site_train_seconds": None,
        "bytes_down_per_site": 100,
        "central": {"accuracy": 0.5},
        "federated": {"accuracy": 0.4},
        "train": {"loss": 1.0},
        "sites": {"a": {"train": {"bytes_up": 10.0, "epsilon": 1.5}, "evaluate": {"accuracy": 0.3}}, "b": {}},
        "failures": [{"site": "c"}],
        "privacy": {"mode": "local", "sites": {"a": {"epsilon": 1.5, "delta": 1e-5}}},
    }
    got = tracking.round_scalars(line)
    assert got == {
        "central/accuracy": 0.5,
        "federated/accuracy": 0.4,
        "train/loss": 1.0,
        "site/a/train/bytes_up": 10.0,
        "site/a/train/epsilon": 1.5,
        "site/a/evaluate/accuracy": 0.3,
        "privacy/site/a/epsilon": 1.5,
        "privacy/site/a/delta": 1e-5,
        "bytes/down_per_site": 100.0,
        "bytes/up_total": 10.0,
        "time/wall_seconds": 2.0,
        "failures": 1.0,
    }
