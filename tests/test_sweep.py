"""Sweeps (simulations/sweep*.py, cell*.py, run_summary.py).

Fast tests prove: a sweep file expands into one validated cell per grid combination with
stable ids (epsilon = inf is privacy off, a finite epsilon turns DP-SGD on); an unknown key or
bad value anywhere stops the sweep naming the key before any cell runs; only a complete,
matching result file counts as done; audit non-members are held-out records of the training
split (never a member, never a reference model's training record) when there are enough; a
run's metrics become final/best/worst-site accuracy, the largest epsilon spent and the bytes
moved.

The slow tests run a real 2 epsilon x 2 site-count sweep on the offline digits data through
Flower's simulation engine. It is interrupted (SIGINT, as Ctrl-C) after its first cell and
rerun: the finished cell is skipped (not recomputed), the rest run, and the sweep writes the
table (config, accuracy, epsilon, MIA columns), the PNGs and an HTML report that renders in
headless chromium; rerunning a DP cell from scratch gives the same results (reproducibility);
``--reaudit`` redoes a stale audit from the saved runs without simulating again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import config as config_mod
from common.errors import ConfigError
from common.models import build_model
from common.weights import exchanged_state
from simulations.run_summary import summarize_run
from simulations.study.cell import with_audit
from simulations.study.cellstore import RESULT, atomic_write, cell_dir, load_result
from simulations.study.sweep import main as sweep_main
from simulations.study.sweep import reaudit_sweep, run_sweep
from simulations.study.sweep_spec import build_sweep, load_sweep
from tests.conftest import REPO, attach_to_shared_ray
from tests.test_report import assert_rendered_with_plots, needs_chromium, screenshot

BASE = {
    "data": {"max_samples": 160},
    "strategy": {"rounds": 2, "min_sites": 2},
    "train": {"batch_size": 16},
    "privacy": {"site_metrics": "exact"},  # the worst-site columns need the sites' held-out metrics
}


def sweep_raw(**extra: object) -> dict:
    raw = {
        "name": "t",
        "base": BASE,
        "grid": {"privacy.target_epsilon": [8, "inf"], "data.num_sites": [2, 3]},
        "audit": {"max_records": 40},
    }
    raw.update(extra)
    return raw


# --------------------------------------------------------------------------- expansion and validation


@pytest.mark.unit
def test_grid_expands_to_validated_cells_with_stable_ids(tmp_path: Path) -> None:
    sweep = build_sweep(sweep_raw(), tmp_path)
    assert [c.axes for c in sweep.cells] == [
        {"privacy.target_epsilon": 8.0, "data.num_sites": 2},
        {"privacy.target_epsilon": 8.0, "data.num_sites": 3},
        {"privacy.target_epsilon": math.inf, "data.num_sites": 2},
        {"privacy.target_epsilon": math.inf, "data.num_sites": 3},
    ]
    dp, off = sweep.cells[0].exp, sweep.cells[2].exp
    assert (dp.privacy.mode, dp.privacy.target_epsilon, dp.data.num_sites) == ("local", 8.0, 2)
    assert (off.privacy.mode, off.privacy.target_epsilon) == ("off", None)
    assert dp.data.max_samples == 160 and dp.name == "t"
    ids = [c.id for c in sweep.cells]
    assert len(set(ids)) == 4 and ids == [c.id for c in build_sweep(sweep_raw(), tmp_path).cells]
    renamed = build_sweep(sweep_raw(name="other"), tmp_path)  # the name is not part of the id ...
    assert [c.id for c in renamed.cells] == ids
    audited = build_sweep(sweep_raw(audit={"max_records": 41}), tmp_path)  # ... what changes results is
    assert not set(c.id for c in audited.cells) & set(ids)


@pytest.mark.unit
def test_noise_axis_zero_means_no_dp_and_overrides_and_axes_apply(tmp_path: Path) -> None:
    raw = sweep_raw(grid={"privacy.noise_multiplier": [0, 1.5]})
    sweep = build_sweep(raw, tmp_path, overrides={"strategy.rounds": 1})
    assert [(c.exp.privacy.mode, c.exp.strategy.rounds) for c in sweep.cells] == [("off", 1), ("local", 1)]
    file = tmp_path / "s.yaml"
    file.write_text(json.dumps(sweep_raw()))
    fewer = load_sweep(file, axes={"data.num_sites": [3]})
    assert [c.axes["data.num_sites"] for c in fewer.cells] == [3, 3]
    with pytest.raises(ConfigError, match="'seed' is not a grid axis"):
        load_sweep(file, axes={"seed": [1]})


@pytest.mark.unit
@pytest.mark.parametrize("name", ["pneumonia", "banking77"])
def test_shipped_sweep_files_expand_to_the_full_grid(name: str) -> None:
    sweep = load_sweep(REPO / "simulations" / "sweeps" / f"{name}.yaml")
    assert len(sweep.cells) == 4 * 2 * 3  # epsilon x alpha x seeds, 5 sites
    assert {c.exp.privacy.mode for c in sweep.cells} == {"local", "off"}
    assert {c.exp.data.num_sites for c in sweep.cells} == {5}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grid": {"train.lrr": [0.1]}}, "unknown config key 'train.lrr'"),
        (
            {"grid": {"privacy.target_epsilon": [8], "data.num_sites": [2, 0]}},
            "config key 'data.num_sites' must be >= 1",
        ),
        # without an epsilon axis every cell is non-private, and the base's privacy.site_metrics would be ignored
        ({"grid": {"data.num_sites": [2, 3]}}, "'privacy.site_metrics' is set but privacy.mode is 'off'"),
        ({"grid": {"train.lr": "0.1"}}, "grid key 'train.lr' .* must be a non-empty list"),
        ({"grid": {"privacy.target_epsilon": [0]}}, "positive number or inf"),
        ({"set": {"model.nam": "bert"}}, "unknown config key 'model.nam'"),
        ({"set": {"data.num_sites": 3}}, "'data.num_sites' is a grid axis"),
        ({"audit": {"sites": 1}}, "unknown sweep key 'audit.sites'"),
        ({"reps": 3}, "unknown sweep key 'reps'"),
        ({"audit": {"site": 2, "max_records": 40}}, r"cell \(.*data.num_sites=2\).*'audit.site' \(2\) names no site"),
    ],
)
def test_bad_sweep_files_stop_naming_the_key(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_sweep(sweep_raw(**change), tmp_path)


@pytest.mark.unit
def test_bad_sweep_file_stops_the_cli_before_any_cell_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    file = tmp_path / "bad.yaml"
    grid = {"privacy.target_epsilon": [8], "data.num_sites": [2, 3], "data.alpha": [0.5, -1]}
    file.write_text(json.dumps(sweep_raw(grid=grid)))
    assert sweep_main([str(file), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("config key 'data.alpha' must be > 0") == 2 and "(2 of 4 cells are invalid)" in err  # all at once
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- done means done


@pytest.mark.unit
def test_only_a_complete_matching_result_counts_as_done(tmp_path: Path) -> None:
    folder = cell_dir(tmp_path, "abc")
    folder.mkdir(parents=True)
    assert load_result(folder, "abc") is None
    (folder / RESULT).write_text('{"cell_id": "abc", "metr')  # a torn write
    assert load_result(folder, "abc") is None
    atomic_write(folder / RESULT, json.dumps({"cell_id": "abc"}))
    assert load_result(folder, "abc") == {"cell_id": "abc"}
    assert load_result(folder, "other") is None
    assert [p.name for p in folder.iterdir()] == [RESULT]  # no temp file left behind


@pytest.mark.unit
def test_run_summary_reads_final_best_worst_epsilon_and_bytes(tmp_path: Path) -> None:
    def site(acc: float, eps: float) -> dict:
        return {"train": {"bytes_up": 100.0, "epsilon": eps}, "evaluate": {"accuracy": acc}}

    rounds = [
        {"round": 0, "central": {"accuracy": 0.1, "macro_f1": 0.05}, "federated": {}, "sites": {}},
        {
            "round": 1,
            "bytes_down_per_site": 10,
            "central": {"accuracy": 0.8, "macro_f1": 0.7},
            "federated": {"accuracy": 0.75, "worst_accuracy": 0.6, "worst_macro_f1": 0.5},
            "sites": {"site-0": site(0.9, 1.0), "site-1": site(0.6, 1.2)},
            "privacy": {"mode": "local", "sites": {"site-0": {"epsilon": 1.0, "delta": 0.01}}},
        },
        {
            "round": 2,
            "bytes_down_per_site": 10,
            "central": {"accuracy": 0.7, "macro_f1": 0.72},
            "federated": {"accuracy": 0.7, "worst_accuracy": 0.65, "worst_macro_f1": 0.4},
            "sites": {"site-0": site(0.75, 2.0), "site-1": site(0.65, 2.5)},
            "failures": [{"site": "site-2"}],
            "privacy": {
                "mode": "local",
                "sites": {"a": {"epsilon": 2.0, "delta": 0.01}, "b": {"epsilon": 2.5, "delta": 0.02}},
            },
        },
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rounds))
    s = summarize_run(tmp_path)
    m = s["metrics"]
    assert (m["final_accuracy"], m["best_accuracy"], m["final_macro_f1"], m["best_macro_f1"]) == (0.7, 0.8, 0.72, 0.72)
    assert (m["final_worst_site_accuracy"], m["best_worst_site_accuracy"], m["best_worst_site_macro_f1"]) == (
        0.65,
        0.65,
        0.5,
    )
    assert (m["epsilon_spent"], m["delta"]) == (2.5, 0.02)  # the worst site's
    assert m["bytes_communicated"] == 2 * (10 * 4 + 200)  # 2 sites x (train + evaluate) down, 2 updates up
    assert m["site_failures"] == 1
    assert s["site_accuracy"] == {"site-0": 0.75, "site-1": 0.65}
    assert [p["central_accuracy"] for p in s["curve"]] == [0.1, 0.8, 0.7]


@pytest.mark.unit
def test_nonmembers_come_from_held_out_training_records_and_never_train_a_reference(tmp_path: Path) -> None:
    from common.data import LabelSet
    from common.site import SiteSpec, site_records
    from simulations.study.study_audit import _nonmember_pool, _population
    from simulations.study.sweep_spec import AuditSettings

    def fingerprints(raw) -> set[bytes]:
        return {img.tobytes() for img in raw.images}

    labels = LabelSet(tuple(str(i) for i in range(10)))
    settings = AuditSettings(max_records=50)
    capped = config_mod.load(None, {"data.max_samples": 300, "data.labels": ",".join(labels.names)})
    train, held_out = site_records(capped, SiteSpec("site-0", 0, 3), labels)
    pool, source = _nonmember_pool(capped, labels, train, held_out, settings)
    assert source == "held-out training-split records" and len(pool) == len(held_out) + 1438 - 300
    population = _population(capped, labels, 0)
    assert not fingerprints(pool) & fingerprints(train) - fingerprints(population)  # never a member ...
    assert not fingerprints(pool) & fingerprints(population) - fingerprints(train)  # ... nor a reference's
    everything = config_mod.replace(capped, **{"data.max_samples": 0, "data.val_fraction": 0.01})
    train, held_out = site_records(everything, SiteSpec("site-0", 0, 3), labels)
    pool, source = _nonmember_pool(everything, labels, train, held_out, settings)
    assert source == "test split" and len(pool) == 359  # too few held-out records: the test split


# --------------------------------------------------------------------------- a real sweep


TINY = {
    "name": "tiny",
    "base": {
        "model": {"name": "resnet8"},  # the sweep machinery is the point, not the model
        "data": {"max_samples": 160},
        "strategy": {"rounds": 2, "min_sites": 2},
        "train": {"batch_size": 16, "max_steps": 2},
        "privacy": {"site_metrics": "exact"},  # the worst-site columns need the sites' held-out metrics
    },
    "grid": {"privacy.target_epsilon": [8, "inf"], "data.num_sites": [2, 3]},
    "audit": {"max_records": 40},
}


@pytest.fixture(scope="module")
def interrupted_sweep(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict:
    """Start the sweep CLI, interrupt it once its first cell is done (its own private Ray, as a
    user's sweep has), then rerun it to the end in this process (on the tests' shared Ray head)."""
    root = tmp_path_factory.mktemp("sweep")
    file, out = root / "tiny.yaml", root / "out"
    file.write_text(json.dumps(TINY))
    sweep = load_sweep(file)
    first = cell_dir(out, sweep.cells[0].id) / RESULT
    env = {**os.environ, "CONFIDE_ROOT": str(root)}
    cmd = [sys.executable, "-m", "simulations.study.sweep", str(file), "--out", str(out), "--no-report"]
    log_file = root / "first-run.log"
    with log_file.open("w") as log_fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert first.exists(), f"the first cell did not finish: {log_file.read_text()[-3000:]}"
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log = log_file.read_text()
    before = {"mtime": first.stat().st_mtime_ns, "runs": sorted((first.parent / "runs").iterdir())}
    done_after_interrupt = [load_result(cell_dir(out, c.id), c.id) is not None for c in sweep.cells]
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        attach_to_shared_ray(request, monkeypatch)
        counts = run_sweep(sweep, out, echo=lines.append)
    return {
        "sweep": sweep,
        "out": out,
        "log": log,
        "returncode": proc.returncode,
        "done_after_interrupt": done_after_interrupt,
        "first": first,
        "before": before,
        "lines": lines,
        "counts": counts,
    }


@pytest.mark.system
@pytest.mark.slow
def test_interrupted_sweep_resumes_without_recomputing_finished_cells(interrupted_sweep: dict) -> None:
    s = interrupted_sweep
    assert s["returncode"] == 130, s["log"][-2000:]
    assert "confide-sweep: interrupted" in s["log"]
    assert s["done_after_interrupt"] == [True, False, False, False]
    assert s["counts"] == {"cells": 4, "skipped": 1, "ran": 3, "failed": 0}
    first_id = s["sweep"].cells[0].id
    assert any(first_id in line and "done earlier, skipped" in line for line in s["lines"])
    assert s["first"].stat().st_mtime_ns == s["before"]["mtime"]  # not rewritten
    assert sorted((s["first"].parent / "runs").iterdir()) == s["before"]["runs"]  # not rerun
    assert sum("ETA" in line for line in s["lines"]) == 3


@pytest.mark.system
@pytest.mark.slow
def test_sweep_writes_the_table_plots_and_report(interrupted_sweep: dict) -> None:
    out = interrupted_sweep["out"]
    rows = json.loads((out / "results.json").read_text())
    model = build_model(config_mod.load(None, {"model.name": "resnet8"}), 10)
    model_bytes = sum(t.numel() * t.element_size() for t in exchanged_state(model).values())
    assert [(r["privacy.target_epsilon"], r["data.num_sites"], r["privacy.mode"]) for r in rows] == [
        (8.0, 2, "local"),
        (8.0, 3, "local"),
        ("inf", 2, "off"),
        ("inf", 3, "off"),
    ]
    for row in rows:
        assert 0 <= row["final_accuracy"] <= 1 and row["best_accuracy"] >= row["final_accuracy"]
        assert row["final_worst_site_accuracy"] <= row["final_sites_accuracy"]
        assert 0 <= row["mia_loss_auc"] <= 1 and 0 <= row["mia_calibrated_auc"] <= 1
        assert 0 <= row["mia_loss_tpr_at_0.1pct_fpr"] <= row["mia_loss_tpr_at_1pct_fpr"] <= 1
        # every site receives the model and sends an update in each of the 2 rounds: 2 x sites x 2 copies
        least = 2 * row["data.num_sites"] * 2 * model_bytes
        assert row["mia_records"] > 10 and row["bytes_communicated"] >= least and row["wall_seconds"] > 1
    assert [r["epsilon_spent"] for r in rows[2:]] == ["inf", "inf"]
    assert all(r["epsilon_spent"] == pytest.approx(8.0, rel=0.01) for r in rows[:2])
    # the cells share the data set, so the sites' ledgers compose: the later cell's sites hold both
    assert max(r["epsilon_cumulative"] for r in rows[:2]) > 8.0 * 1.2
    assert rows[2]["final_accuracy"] > rows[0]["final_accuracy"]  # no DP learns more in this budget
    assert len((out / "summary.csv").read_text().splitlines()) == 5
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == [
        "accuracy_by_round.png",
        "privacy_utility.png",
        "site_spread.png",
    ]


@pytest.mark.system
@pytest.mark.slow
@needs_chromium
def test_sweep_report_renders_in_headless_chromium(interrupted_sweep: dict, tmp_path: Path) -> None:
    assert_rendered_with_plots(screenshot(interrupted_sweep["out"] / "report.html", tmp_path / "shot.png"))


@pytest.mark.system
@pytest.mark.slow
def test_same_sweep_and_seed_give_the_same_results(
    interrupted_sweep: dict, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DP cell rerun from scratch in another folder: same metrics (not wall time), same curve.
    The first run was the sweep CLI's own process on a private Ray; this one runs in this process
    on actors other simulations used before, so it also shows that nothing carries over between
    simulations on kept actors. The sites' cumulative epsilon is left out: it is whatever the
    ledgers in the state folder hold (this test's own folder, not the fixture's), never less than
    what the job spent."""
    attach_to_shared_ray(request, monkeypatch)
    sweep = interrupted_sweep["sweep"]
    one = dataclasses.replace(sweep, cells=sweep.cells[:1])
    run_sweep(one, tmp_path / "again", report=False, echo=lambda _: None)
    cell = sweep.cells[0].id
    a = load_result(cell_dir(interrupted_sweep["out"], cell), cell)
    b = load_result(cell_dir(tmp_path / "again", cell), cell)
    assert a is not None and b is not None
    for key, value in a["metrics"].items():
        if key not in ("wall_seconds", "epsilon_cumulative"):
            assert b["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), key
    assert b["metrics"]["epsilon_cumulative"] >= b["metrics"]["epsilon_spent"]
    for pa, pb in zip(a["curve"], b["curve"], strict=True):
        assert pb == pytest.approx(pa, nan_ok=True)
    assert b["site_accuracy"] == pytest.approx(a["site_accuracy"])


@pytest.mark.system
@pytest.mark.slow
def test_reaudit_redoes_the_audit_from_saved_runs_without_simulating(interrupted_sweep: dict) -> None:
    """Runs last: it rewrites the results (to the same values)."""
    sweep, out = interrupted_sweep["sweep"], interrupted_sweep["out"]
    folder = cell_dir(out, sweep.cells[0].id)
    result = load_result(folder, sweep.cells[0].id)
    assert result is not None
    atomic_write(folder / RESULT, json.dumps(with_audit(result, {"mia_loss_auc": -1.0})))  # a stale audit
    runs = sorted(p for c in sweep.cells for p in (cell_dir(out, c.id) / "runs").iterdir())
    assert reaudit_sweep(sweep, out, echo=lambda _: None) == 4
    again = load_result(folder, sweep.cells[0].id)
    assert again is not None and again["metrics"] == pytest.approx(result["metrics"], nan_ok=True)
    assert again["audit_notes"]["nonmembers"] == "held-out training-split records"
    assert sorted(p for c in sweep.cells for p in (cell_dir(out, c.id) / "runs").iterdir()) == runs  # no new run


@pytest.mark.unit
def test_an_audit_reference_model_of_a_private_cell_trains_without_dp() -> None:
    """The calibrated attack's reference models train without DP: the cell's whole privacy section
    goes back to its defaults (a DP setting left beside mode off would be refused), seed moved."""
    from common import config as config_mod
    from simulations.study.study_audit import _reference_experiment

    private = {"privacy.mode": "local", "privacy.target_epsilon": 8, "privacy.site_metrics": "exact"}
    cell = config_mod.load(None, private)
    ref = _reference_experiment(cell, 0)
    assert ref.privacy == config_mod.PrivacyConfig() and ref.seed == cell.seed + 7919
    assert ref.model == cell.model and ref.data == cell.data
