"""The baseline's rounds, run by the coordinator before the model's (common/baseline.py).

Same grid, same sites, same round loop and strategy checks as the model; the messages say
``phase: baseline`` so each site trains its baseline layer (and charges its ledger under that tag).
The result, ``baseline.json`` and ``baseline/`` (its round lines and exported layer) in the run
folder, is what the model's round lines, the model card and the study report set beside the model;
a resumed run reads it back instead of training the baseline again.

Under ``strategy.final_model: best_held_out`` the baseline is one more candidate: where its
site-weighted held-out accuracy beats the model's chosen round, the job exports the baseline's layer
in the model's place and keeps the trained model beside it (``TRAINED_MODEL``). The choice reads the
sites' held-out data only, as the choice of round does; the test set never chooses.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from torch.utils.data import DataLoader

from common import atomic, baseline
from common.config import ExperimentConfig
from common.data import LabelSet, read_test, read_train
from common.device import place
from common.errors import ConfideError, ConfigError
from common.export import save_model
from common.metrics import JsonlLog
from common.models import build_model
from common.train import evaluate
from common.weights import exchanged_state, get_weights, set_weights
from server.loop import run_rounds
from server.recorder import RoundRecorder
from server.secagg import secure_aggregation
from server.selection import ModelSelection, held_out
from server.strategy import build_strategy, to_weights

RESULT_FILE = "baseline.json"
# Where the trained model goes when the baseline is exported in its place.
TRAINED_MODEL = "trained_model"


@dataclass(frozen=True)
class BaselineResult:
    """What the job reports of its baseline: the exported round's test and held-out accuracy."""

    features: str
    rounds: int
    exported_round: int
    exported: str  # how the round was chosen, in words
    central_accuracy: float | None
    central_macro_f1: float | None
    sites_accuracy: float | None  # site-weighted held-out accuracy, where the sites release it
    target_epsilon: float | None  # its DP-SGD's share of the budget (local DP)

    def accuracy(self) -> float | None:
        """The figure set beside the model's: test accuracy, else the sites' held-out accuracy."""
        return self.central_accuracy if self.central_accuracy is not None else self.sites_accuracy


def read_result(folder: Path) -> BaselineResult | None:
    path = folder / RESULT_FILE
    if not path.is_file():
        return None
    return BaselineResult(**json.loads(path.read_text()))


def image_side(exp: ExperimentConfig) -> int:
    """The side of the job's images (0 for text): the baseline layer's width depends on it.
    ``data.image_size`` where set (every site resizes to it); else the coordinator's own test set,
    else the training data it can read (a simulation's); a deployed coordinator with neither must be told."""
    if exp.data.is_text:
        return 0
    if exp.data.image_size:
        return exp.data.image_size
    for read in (read_test, read_train):
        try:
            records = read(exp.data)
        except (ConfideError, OSError):
            continue
        if records is not None and records.images is not None and len(records.images):
            return int(records.images.shape[-1])
    raise ConfigError(
        "the baseline's layer needs the images' side and the coordinator has no image to read it from: "
        "set config key 'data.image_size' (or baseline.features: off)"
    )


def run_baseline(
    grid: Grid,
    exp: ExperimentConfig,
    labels: LabelSet,
    folder: Path,
    job: str,
    *,
    central_loader: Callable[[ExperimentConfig], DataLoader | None],
    selection: Callable[[ExperimentConfig], ModelSelection],
    print_round: Callable[[dict[str, Any]], None],
) -> BaselineResult:
    """Train the baseline federated (its rounds, then its choice of round) and write its result.
    ``selection`` makes the model-selection rule for an experiment (server/selection.py), so the
    baseline's export follows the same ``strategy.final_model`` as the model's."""
    side = image_side(exp)
    bexp = baseline.baseline_experiment(exp, side)
    model = place(build_model(bexp, len(labels)), bexp.train)
    out = folder / "baseline"
    out.mkdir(parents=True, exist_ok=True)
    recorder = RoundRecorder(JsonlLog(out / "metrics.jsonl"), run_id=job, mode=bexp.privacy.mode)
    initial = get_weights(model)
    strategy = build_strategy(bexp, initial, recorder, job)
    chooser = selection(bexp)
    test_loader = central_loader(bexp)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        weights = to_weights(arrays)
        metrics = None
        if test_loader is not None:
            set_weights(model, weights, source="the aggregated baseline")
            metrics = evaluate(model, test_loader, len(labels)).as_dict()
        if server_round == 0:
            recorder.begin(0, bytes_down=0)
        line = recorder.close(metrics)
        chooser.offer(server_round, line, weights)
        print_round(line)
        return MetricRecord(metrics) if metrics else None

    config = {"labels": list(labels.names), "job": job, "phase": baseline.PHASE, "image-size": side}
    final = run_rounds(
        strategy,
        grid,
        ArrayRecord(exchanged_state(model)),
        first_round=1,
        num_rounds=bexp.strategy.rounds,
        timeout=bexp.strategy.round_timeout,
        train_config=ConfigRecord(config),
        evaluate_config=ConfigRecord(config),
        evaluate_fn=evaluate_fn,
        secure=secure_aggregation(bexp),
    )
    chosen_round, weights = chooser.choice(bexp.strategy.rounds, to_weights(final))
    set_weights(model, weights, source="the exported baseline")
    save_model(model, bexp, labels, out / "model")
    averaged = chooser.averages and test_loader is not None  # a mean of rounds: its own test metrics
    own = evaluate(model, test_loader, len(labels)).as_dict() if averaged else None
    final = chooser.final_metrics(recorder.history[chosen_round], own)
    central = final.get("central") or {}
    result = BaselineResult(
        features=bexp.model.features,
        rounds=bexp.strategy.rounds,
        exported_round=chosen_round,
        exported=chooser.describe(),
        central_accuracy=central.get("accuracy"),
        central_macro_f1=central.get("macro_f1"),
        sites_accuracy=held_out(final),
        target_epsilon=bexp.privacy.target_epsilon if bexp.privacy.local else None,
    )
    atomic.write_text(folder / RESULT_FILE, json.dumps(asdict(result), indent=1))  # a resume trusts it
    return result


def exported_instead(exp: ExperimentConfig, rule: str, base: BaselineResult | None, final: dict[str, Any]) -> bool:
    """Whether the baseline is exported in the model's place: ``baseline.export_if_better`` is on, the
    export is chosen on the sites' held-out data (``rule`` best_held_out), both held-out accuracies
    were released, and the baseline's is strictly higher (a tie keeps the model the job trained)."""
    if not exp.baseline.export_if_better or rule != "best_held_out" or base is None or base.sites_accuracy is None:
        return False
    model = held_out(final)
    return model is not None and base.sites_accuracy > model


def baseline_final(folder: Path, base: BaselineResult) -> dict[str, Any]:
    """The baseline's exported round's metrics, as the model card lists an export's."""
    lines = JsonlLog(folder / "baseline" / "metrics.jsonl").read()
    line = next((r for r in lines if r["round"] == base.exported_round), {})
    return {k: line[k] for k in ("federated", "central") if line.get(k)}


def export_baseline(folder: Path) -> None:
    """Put the baseline's layer at ``model/`` (scored and loaded like any export) after the trained
    model was saved at ``TRAINED_MODEL``; the run folder is still incomplete, so a crash here leaves
    nothing a rerun would trust."""
    target = folder / "model"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder / "baseline" / "model", target)
