"""The server side of one experiment: labels, initial model, rounds, outputs.

Called by ``server/app.py`` with the Flower grid and the resolved experiment.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from torch import nn
from torch.utils.data import DataLoader

from common import baseline as baseline_mod
from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.checkpoint import Checkpoint, capture_rng, flat_config, restore_rng
from common.config import ExperimentConfig
from common.data import LabelSet, check_sites, label_set, read_test, read_train
from common.device import place
from common.errors import ConfideError, ConfigError
from common.export import save_model, write_model_card
from common.models import build_model, check_model_source
from common.privacy.governance import statement
from common.privacy.governance.ledger_home import ledger_root
from common.privacy.mechanism.accounting import check_delta
from common.progress import clock_text
from common.rundir import RunDir, check_resumable, open_resumed
from common.tracking import Tracker
from common.train import evaluate
from common.weights import check_update, exchanged_state, get_weights, set_weights
from server.baseline_phase import (
    TRAINED_MODEL,
    BaselineResult,
    baseline_final,
    export_baseline,
    exported_instead,
    read_result,
    run_baseline,
)
from server.central_dp import CentralDP
from server.loop import run_rounds
from server.recorder import RoundRecorder
from server.secagg import secure_aggregation
from server.selection import ModelSelection, held_out, strategy_evaluates
from server.strategy import build_strategy, to_weights

log = logging.getLogger(__name__)

JOB_KEY = "job"  # the job id sent with every message (client/app.py keys the site's ledger by it)


@dataclass(frozen=True)
class RunSummary:
    path: Path
    rounds: list[dict[str, Any]]


def resolve_labels(exp: ExperimentConfig) -> ExperimentConfig:
    """Fix the label set once (derived from the training data if not configured)."""
    if exp.data.labels:
        return exp
    # From every training record, not the data.max_samples head: the full test split must fit it.
    labels = label_set(exp.data, read_train(dataclasses.replace(exp.data, max_samples=0)))
    log.info("label set derived from the training data: %d labels", len(labels))
    return config_mod.replace(exp, **{"data.labels": labels.names, "data.labels_from_records": True})


def resolve_ledger_dir(exp: ExperimentConfig) -> ExperimentConfig:
    """Fix where simulated parties keep their ledgers (the state folder's, unless set) in the
    resolved experiment, so every process of the job, and a resume, uses the same folder. A job
    without DP keeps no ledger."""
    if exp.privacy.ledger_dir or exp.privacy.mode == "off":
        return exp
    return config_mod.replace(exp, **{"privacy.ledger_dir": str(ledger_root(exp))})


def check_output_dir(exp: ExperimentConfig) -> None:
    """``output_dir`` is a folder, or can become one (not a file, nor below one)."""
    out = config_mod.resolve_path(exp.output_dir)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"config key 'output_dir': {p} is a file; run folders need a folder")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(f"config key 'output_dir': {p} is not writable")
            return


def preflight(exp: ExperimentConfig, resume: Path | None = None) -> ExperimentConfig:
    """The checks that need no site, run before a simulation engine starts (seconds instead of
    Ray's start-up): the training file and its label set, the test file against it, and a run
    folder to resume against the experiment. Readers are cached per process, so the in-process
    ServerApp does not read the files again."""
    check_output_dir(exp)
    exp = resolve_ledger_dir(resolve_labels(exp))
    check_model_source(exp)  # model.checkpoint / model.weights / >= 2 labels, before any tokenizer load
    sizes = check_sites(exp.data, exp.seed)  # training labels in the label set; enough records per site
    if exp.privacy.local and exp.privacy.delta:  # each site refuses a delta >= 1/n; the clear cases here
        check_delta(exp.privacy.delta, min(sizes), "privacy.delta", "n: the smallest simulated site's records")
    _central_loader(exp, LabelSet(exp.data.labels))
    if resume is not None:
        check_resumable(resume, exp)
    return exp


def run_experiment(grid: Grid, exp: ExperimentConfig, run_id: str, resume: Path | None = None) -> RunSummary:
    """Run the experiment, or with ``resume`` (a stopped run's folder) continue it from the round
    after its checkpoint (common/checkpoint.py)."""
    exp = resolve_ledger_dir(resolve_labels(exp))
    labels = LabelSet(exp.data.labels)
    model = place(build_model(exp, len(labels)), exp.train)
    test_loader = _central_loader(exp, labels)
    if resume is None:
        run_dir, start = RunDir(exp, run_id), None
    else:
        run_dir, checkpoint, history = open_resumed(resume, exp, run_id)
        start = (checkpoint, history)
        print(
            f"[confide] resuming {run_dir.path} after round {checkpoint.round} of {exp.strategy.rounds} "
            f"(job {checkpoint.job}; sites' privacy ledgers continue)",
            flush=True,
        )
    tracker = Tracker()
    try:
        tracker = Tracker.open(exp, run_dir.path, start[1] if start else (), resumed=start is not None)
        return _run_rounds(grid, exp, labels, model, test_loader, run_dir, start, tracker)
    except ConfideError as exc:
        run_dir.fail(str(exc))
        raise
    finally:
        tracker.close()  # the MLflow run ends FINISHED only after tracker.finish, else FAILED


def _run_rounds(
    grid: Grid,
    exp: ExperimentConfig,
    labels: LabelSet,
    model: nn.Module,
    test_loader: DataLoader | None,
    run_dir: RunDir,
    start: tuple[Checkpoint, list[dict[str, Any]]] | None,
    tracker: Tracker,
) -> RunSummary:
    recorder = RoundRecorder(run_dir.metrics, run_id=run_dir.run_id, mode=exp.privacy.mode)
    initial = get_weights(model)
    buffers = frozenset(name for name, _ in model.named_buffers()) & frozenset(initial)
    # The job: the Flower run that started it. Sites key their privacy ledgers by it, so a resumed
    # job's epsilon composes every round the sites trained for it, before and after the stop.
    job = start[0].job if start else run_dir.run_id
    strategy = build_strategy(exp, initial, recorder, job, buffers)
    central = strategy if isinstance(strategy, CentralDP) else None
    checks = central.base if central else strategy
    selection = ModelSelection.for_experiment(exp)
    first_round, arrays = 1, ArrayRecord(exchanged_state(model))
    if start:
        checkpoint, history = start
        check_update(initial, checkpoint.weights, f"the checkpoint in {run_dir.path}")
        checks.load_server_state(checkpoint.server_state)
        recorder.restore(history)
        selection.restore(checkpoint)
        restore_rng(checkpoint.rng)
        first_round = checkpoint.round + 1
        arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in checkpoint.weights.items()})

    base = _baseline(grid, exp, labels, run_dir, job, resumed=start is not None)

    def server_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        weights = to_weights(arrays)
        metrics = None
        if test_loader is not None:
            set_weights(model, weights, source="the aggregated global model")
            metrics = evaluate(model, test_loader, len(labels)).as_dict()
        if server_round == 0:
            recorder.begin(0, bytes_down=0)
        privacy = central.ledger.as_record(job, server_round, *central.last) if central else None
        line = recorder.close(metrics, privacy)
        tracker.log_round(line)
        selection.offer(server_round, line, weights)
        if server_round > 0:  # after the round's line: a round logged but not checkpointed is redone
            run_dir.save_checkpoint(
                Checkpoint(
                    server_round, job, flat_config(exp), weights, checks.server_state(), selection.best, capture_rng(),
                    tail=selection.tail,
                )
            )  # fmt: skip
        _print_round(
            line,
            timing(time.monotonic() - started, server_round - first_round + 1, exp.strategy.rounds - server_round),
            base,
        )
        return MetricRecord(metrics) if metrics else None

    started = time.monotonic()
    if exp.strategy.final_model == "best_held_out" and not strategy_evaluates(exp):
        log.warning(
            "strategy.final_model=best_held_out: the sites release no held-out accuracy in this job "
            "(privacy.site_metrics=withhold under DP, or strategy.fraction_evaluate=0); the last round's "
            "model will be exported"
        )
    final_arrays = run_rounds(
        strategy,
        grid,
        arrays,
        first_round=first_round,
        num_rounds=exp.strategy.rounds,
        timeout=exp.strategy.round_timeout,
        train_config=ConfigRecord({"labels": list(labels.names), JOB_KEY: job}),
        evaluate_config=ConfigRecord({"labels": list(labels.names), JOB_KEY: job}),
        evaluate_fn=server_evaluate,
        secure=secure_aggregation(exp),
    )
    exported_round, exported = selection.choice(exp.strategy.rounds, to_weights(final_arrays))
    set_weights(model, exported, source="the exported global model")
    last = recorder.history[-1]
    averaged = selection.averages and test_loader is not None  # an average's own test metrics: no round's line
    central = evaluate(model, test_loader, len(labels)).as_dict() if averaged else None
    final = selection.final_metrics(recorder.history[exported_round], central)
    instead = exported_instead(exp, selection.rule, base, final)
    save_model(model, exp, labels, run_dir.path / (TRAINED_MODEL if instead else "model"))
    described, exported_final = selection.describe(), final
    if instead and base is not None:
        export_baseline(run_dir.path)
        exported_final = baseline_final(run_dir.path, base)
        described = (
            f"the baseline's linear layer on {base.features} ({base.exported}): its site-weighted held-out "
            f"accuracy {base.sites_accuracy:.4f} beats the trained model's {held_out(final):.4f} ({described}); "
            f"the trained model is kept in {TRAINED_MODEL}/ (strategy.final_model=best_held_out)"
        )
    privacy = last.get("privacy") or {}
    if privacy.get("mode") != exp.privacy.mode:  # e.g. local DP where no site has trained yet
        privacy = {"mode": exp.privacy.mode, "sites": {}}
    privacy_lines = statement.lines(statement.write(run_dir.path, exp, privacy))
    comparison = baseline_lines(exp, base, final, exported_round, instead)
    write_model_card(
        run_dir.path, exp, labels, recorder.last_sites, exported_final, privacy_lines, described, recorder.history,
        comparison,
    )  # fmt: skip
    tracker.finish(run_dir.path)  # before the folder's rename: TensorBoard reopens its file by name
    path = run_dir.finish()
    _print_summary(recorder.history, path, privacy_lines)
    for text in comparison:
        print(f"[confide] {text}", flush=True)
    print(f"[confide] exported model: {described}", flush=True)
    return RunSummary(path=path, rounds=recorder.history)


def _baseline(
    grid: Grid, exp: ExperimentConfig, labels: LabelSet, run_dir: RunDir, job: str, resumed: bool
) -> BaselineResult | None:
    """The job's baseline (common/baseline.py): trained before the model's first round, read back on
    a resume (a job resumed after its model's rounds began never trains it again)."""
    if resumed:
        return read_result(run_dir.path)
    feature = baseline_mod.features(exp)
    if feature is None:
        log.info("no baseline: %s", baseline_mod.why_off(exp))
        return None
    print(f"[confide] baseline first: a linear layer on {feature}, federated on the same sites "
          "(baseline.features; 'off' to skip)", flush=True)  # fmt: skip
    return run_baseline(
        grid, exp, labels, run_dir.path, job,
        central_loader=lambda e: _central_loader(e, labels),
        selection=ModelSelection.for_experiment,
        print_round=lambda line: _print_round(line, prefix="baseline "),
    )  # fmt: skip


def baseline_lines(
    exp: ExperimentConfig,
    base: BaselineResult | None,
    final: dict[str, Any],
    exported_round: int,
    instead: bool = False,
) -> list[str]:
    """The model against its baseline, in words (model card, end of run); ``instead``: the baseline
    was exported in the model's place (server/baseline_phase.py)."""
    if base is None:
        why = baseline_mod.why_off(exp) or "its result is missing from the run folder"
        return [f"Baseline: none in this job ({why})."]
    share = f", spending epsilon {base.target_epsilon:g} of the job's target" if base.target_epsilon else ""
    lines = [f"Baseline: a linear layer on {base.features}, {base.rounds} rounds on the same sites{share}; "
             f"exported {base.exported}."]  # fmt: skip
    for key, scope in (("central", "test"), ("federated", "held-out")):
        model = (final.get(key) or {}).get("accuracy")
        theirs = base.central_accuracy if key == "central" else base.sites_accuracy
        if model is None or theirs is None:
            continue
        verdict = "beats" if model > theirs else "does NOT beat"
        lines.append(f"On the {scope} data the model (round {exported_round}, accuracy {model:.4f}) {verdict} "
                     f"the baseline (accuracy {theirs:.4f}).")  # fmt: skip
        if model <= theirs and not instead:
            lines.append(f"The baseline's layer is in the run folder's baseline/model: on this data it is the "
                         f"better model ({scope} accuracy).")  # fmt: skip
    if instead:
        lines.append(f"The baseline beat the model on the sites' held-out data, so the job exports it (model/); "
                     f"the trained model is in {TRAINED_MODEL}/.")  # fmt: skip
    return lines


def _central_loader(exp: ExperimentConfig, labels: LabelSet) -> DataLoader | None:
    if not exp.data.central_eval:
        return None
    if exp.strategy.personalize != "off":  # the coordinator's head is never trained: nothing to test
        log.info("strategy.personalize: each site's model has its own head; federated (per-site) evaluation only")
        return None
    records = read_test(exp.data)
    if records is None:
        log.info("no server-side test set (data.test_path is empty): federated evaluation only")
        return None
    where = exp.data.test_path or exp.data.path or f"built-in '{exp.data.source}'"
    dataset = make_dataset(records.with_labels(labels, where=where), exp.model)
    return make_loader(dataset, exp.train.eval_batch_size, shuffle=False)


def timing(elapsed: float, rounds_done: int, rounds_left: int) -> str:
    """ "elapsed 1m20s, ~3m10s left": this process's time so far and, from its mean round, the
    rest of the run (round 0, the initial evaluation, counts as no round)."""
    text = f"elapsed {clock_text(elapsed)}"
    if rounds_done > 0 and rounds_left > 0:
        text += f", ~{clock_text(elapsed / rounds_done * rounds_left)} left"
    return text


def _print_round(line: dict[str, Any], when: str = "", base: BaselineResult | None = None, prefix: str = "") -> None:
    fed, cen = line["federated"], line["central"]
    parts = [f"[confide] {prefix}round {line['round']}"]
    if cen:
        parts.append(f"central acc {cen['accuracy']:.4f} f1 {cen['macro_f1']:.4f} loss {cen['loss']:.4f}")
    if fed:
        parts.append(f"sites acc {fed['accuracy']:.4f} (worst {fed['worst_accuracy']:.4f})")
    privacy = line.get("privacy", {})
    if privacy.get("mode") == "central":
        parts.append(f"site-level epsilon {privacy['epsilon']:.3f}")
    elif privacy.get("mode") == "local" and privacy.get("sites"):
        parts.append(f"max site epsilon {max(v['epsilon'] for v in privacy['sites'].values()):.3f}")
    if line["failures"]:
        parts.append(f"{len(line['failures'])} site failure(s)")
    if base is not None and base.accuracy() is not None:
        scope = "central" if base.central_accuracy is not None else "sites"
        parts.append(f"baseline {scope} acc {base.accuracy():.4f}")
    if when:
        parts.append(when)
    print(" | ".join(parts), flush=True)


def _print_summary(history: list[dict[str, Any]], path: Path, privacy_lines: list[str]) -> None:
    print("\n[confide] summary", flush=True)
    print(f"{'round':>5} {'central acc':>11} {'central f1':>10} {'sites acc':>9} {'worst site':>10}")
    for line in history:
        cen, fed = line["central"], line["federated"]
        print(
            f"{line['round']:>5} {_fmt(cen.get('accuracy')):>11} {_fmt(cen.get('macro_f1')):>10} "
            f"{_fmt(fed.get('accuracy')):>9} {_fmt(fed.get('worst_accuracy')):>10}"
        )
    for line in privacy_lines:
        print(f"[confide] privacy: {line}", flush=True)
    print(f"[confide] run folder: {path}", flush=True)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
