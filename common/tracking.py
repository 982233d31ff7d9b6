"""Experiment tracking (``tracking:`` in the experiment): TensorBoard event files and an MLflow run.

Written by the coordinator only, from what it already holds: the resolved config (MLflow params,
TensorBoard text), each round's metrics.jsonl line as scalars (``round_scalars``), and at the end
the run folder's final model, model card, config, metrics and privacy statement (MLflow artifacts).

- TensorBoard: ``<run folder>/tensorboard/`` (``tensorboard --logdir runs``).
- MLflow: ``tracking.mlflow_uri``, or when empty a SQLite store ``<output_dir>/mlflow.db`` with
  artifacts beside it in ``<output_dir>/mlartifacts/``; no server needed. The experiment is
  ``tracking.mlflow_experiment`` or the experiment's name; the run is named after the run folder.
  The run's id is kept in ``<run folder>/tracking.json`` so a resumed run continues the same MLflow
  run (a new run tagged ``confide.resumed_from_round`` when that id is not in the store).

Both libraries are imported only when their switch is on; with both off ``Tracker.open`` returns a
tracker that does nothing. After the run has started, a failing store only costs a warning: the
federated run goes on without that sink.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from common import config as config_mod
from common.config import ExperimentConfig, resolve_path
from common.errors import ConfigError
from common.rundir import INCOMPLETE

log = logging.getLogger(__name__)

TB_DIR = "tensorboard"
STATE = "tracking.json"  # in the run folder: the MLflow run to continue on resume
DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
ARTIFACTS = ("MODEL_CARD.md", "config.yaml", "metrics.jsonl", "privacy.json")  # files, plus model/
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /]")


# --- what is logged --------------------------------------------------------------------------


def round_scalars(line: Mapping[str, Any]) -> dict[str, float]:
    """One metrics.jsonl line as flat scalar names: central/*, federated/*, train/* (site-weighted),
    site/<name>/train/* and site/<name>/evaluate/* (each site's values), privacy/* (with
    privacy/site/<name>/* per site), bytes/* and time/*. Non-numbers and non-finite values are left out."""
    out: dict[str, float] = {}
    for section in ("central", "federated", "train"):
        _put(out, section, line.get(section) or {})
    for name, phases in (line.get("sites") or {}).items():
        for phase, values in phases.items():
            _put(out, f"site/{name}/{phase}", values)
    privacy = line.get("privacy") or {}
    _put(out, "privacy", {k: v for k, v in privacy.items() if k != "sites"})
    for name, values in (privacy.get("sites") or {}).items():
        _put(out, f"privacy/site/{name}", values)
    sent = [s.get("train", {}).get("bytes_up") for s in (line.get("sites") or {}).values()]
    _put(out, "bytes", {"down_per_site": line.get("bytes_down_per_site"), "up_total": sum(b for b in sent if b)})
    _put(out, "time", {k: line.get(k) for k in ("wall_seconds", "train_phase_seconds", "slowest_site_train_seconds")})
    out["failures"] = float(len(line.get("failures") or []))
    return out


def _put(out: dict[str, float], prefix: str, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[_BAD_KEY_CHARS.sub("_", f"{prefix}/{key}")] = float(value)


def params(exp: ExperimentConfig) -> dict[str, str]:
    """The resolved config as flat ``section.key`` -> text (lists as JSON), each within MLflow's limit."""
    flat = config_mod.flatten(config_mod.to_dict(exp))
    return {k: _text(v)[:MAX_PARAM_CHARS] for k, v in flat.items()}


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def mlflow_uri(exp: ExperimentConfig) -> str:
    """``tracking.mlflow_uri``, or the default SQLite store in the output folder."""
    return exp.tracking.mlflow_uri or sqlite_uri(resolve_path(exp.output_dir) / DEFAULT_DB)


def experiment_name(exp: ExperimentConfig) -> str:
    return exp.tracking.mlflow_experiment or exp.name


def artifact_root(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store (``mlartifacts/<name>``);
    None (the store's own default) for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    base = Path(uri.removeprefix("sqlite:///")).resolve().parent
    return (base / ARTIFACTS_DIR / _BAD_KEY_CHARS.sub("_", experiment).replace("/", "_")).as_uri()


# --- the sinks -------------------------------------------------------------------------------


class _Sink(Protocol):
    def log_round(self, line: Mapping[str, Any]) -> None: ...
    def finish(self, folder: Path) -> None: ...
    def close(self, status: str) -> None: ...


class _TensorBoard:
    """Event files in ``<run folder>/tensorboard/``, one scalar per ``round_scalars`` name, step = round."""

    def __init__(self, exp: ExperimentConfig, folder: Path, history: Sequence[Mapping[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        fresh = not (folder / TB_DIR).is_dir()
        self.writer = SummaryWriter(log_dir=str(folder / TB_DIR))
        if fresh:  # a resumed run whose first part wrote no events: its rounds so far too
            self.writer.add_text("config", "```\n" + yaml.safe_dump(config_mod.to_dict(exp), sort_keys=False) + "```")
            for line in history:
                self.log_round(line)

    def log_round(self, line: Mapping[str, Any]) -> None:
        for key, value in round_scalars(line).items():
            self.writer.add_scalar(key, value, global_step=int(line["round"]))
        self.writer.flush()

    def finish(self, folder: Path) -> None:
        card = folder / "MODEL_CARD.md"
        if card.is_file():
            self.writer.add_text("model_card", card.read_text())
        self.writer.close()  # now: the run folder is renamed next, and the writer reopens its file by name

    def close(self, status: str) -> None:
        self.writer.close()


class _Mlflow:
    """One MLflow run: params at the start, a metric batch per round, artifacts at the end."""

    def __init__(
        self, exp: ExperimentConfig, folder: Path, history: Sequence[Mapping[str, Any]], resumed: bool
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = mlflow_uri(exp)
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment_id = ensure_experiment(self.client, experiment_name(exp), self.uri)
        previous = _read_state(folder).get("mlflow_run_id") if resumed else None
        if previous and self._exists(previous):
            self.run_id = previous
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "confide.resumed_from_round", str(len(history) - 1))
        else:
            tags = {"confide.run_folder": str(_final(folder))}
            if resumed:
                tags["confide.resumed_from_round"] = str(len(history) - 1)
            self.run_id = self.client.create_run(experiment_id, run_name=_final(folder).name, tags=tags).info.run_id
            self._log_params(params(exp))
            for line in history:
                self.log_round(line)
        (folder / STATE).write_text(json.dumps({"mlflow_uri": self.uri, "mlflow_run_id": self.run_id}) + "\n")

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def _log_params(self, values: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in values.items()]
        for chunk in _chunks(items, 100):  # MLflow's batch limit for params
            self.client.log_batch(self.run_id, params=chunk)

    def log_round(self, line: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(line["round"])
        metrics = [Metric(k, v, now, step) for k, v in round_scalars(line).items()]
        for chunk in _chunks(metrics, 1000):  # MLflow's batch limit for metrics
            self.client.log_batch(self.run_id, metrics=chunk)

    def finish(self, folder: Path) -> None:
        for name in ARTIFACTS:
            if (folder / name).is_file():
                self.client.log_artifact(self.run_id, str(folder / name))
        if (folder / "model").is_dir():
            self.client.log_artifacts(self.run_id, str(folder / "model"), artifact_path="model")
        self.client.set_tag(self.run_id, "confide.run_folder", str(_final(folder)))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The MLflow experiment's id, created (artifacts beside a SQLite store) when it is new; another
    process creating it at the same moment (a parallel sweep) is not an error."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(uri, name))
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def prepare_store(exp: ExperimentConfig) -> None:
    """Create the MLflow store and experiment now (before parallel sweep cells open them at once)."""
    if not exp.tracking.mlflow:
        return
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri(exp)
    ensure_experiment(MlflowClient(tracking_uri=uri), experiment_name(exp), uri)


def _final(folder: Path) -> Path:
    """The run folder's name once complete (common/rundir.py renames ``<name>.incomplete``)."""
    return folder.with_name(folder.name.removesuffix(INCOMPLETE))


def _read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --- the tracker -----------------------------------------------------------------------------


class Tracker:
    """The run's sinks: ``open`` at the start, ``log_round`` per round, ``finish`` with the final run
    folder, ``close`` always (the MLflow run ends FINISHED after ``finish``, else FAILED)."""

    def __init__(self, sinks: list[_Sink] | None = None) -> None:
        self.sinks: list[_Sink] = sinks or []
        self.status = "FAILED"

    @classmethod
    def open(
        cls,
        exp: ExperimentConfig,
        folder: Path,
        history: Sequence[Mapping[str, Any]] = (),
        resumed: bool = False,
    ) -> Tracker:
        """The sinks ``exp.tracking`` turns on, for the run folder ``folder`` (with ``resumed``, a
        stopped run's, whose ``history`` is its rounds so far). Raises ConfigError when a store
        cannot be opened or its package is missing; opens nothing when tracking is off."""
        sinks: list[_Sink] = []
        try:
            if exp.tracking.tensorboard:
                sinks.append(_TensorBoard(exp, folder, history))
            if exp.tracking.mlflow:
                sinks.append(_Mlflow(exp, folder, history, resumed))
        except ImportError as exc:
            _close_all(sinks, "FAILED")
            raise ConfigError(
                f"tracking: {exc.name or exc} is not installed (tracking.tensorboard needs 'tensorboard', "
                "tracking.mlflow 'mlflow-skinny'; both come with `pip install -e .`)"
            ) from None
        except Exception as exc:
            _close_all(sinks, "FAILED")
            raise ConfigError(f"tracking: could not open the tracking store: {type(exc).__name__}: {exc}") from None
        return cls(sinks)

    @property
    def enabled(self) -> bool:
        return bool(self.sinks)

    def log_round(self, line: Mapping[str, Any]) -> None:
        self._each("log_round", line)

    def finish(self, folder: Path) -> None:
        """The run completed in ``folder`` (before its rename to the final name): log its final model
        and records; the MLflow run ends FINISHED at ``close``."""
        self._each("finish", folder)
        self.status = "FINISHED"

    def close(self) -> None:
        _close_all(self.sinks, self.status)
        self.sinks = []

    def _each(self, method: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as exc:  # a tracking store's fault never stops the federated run
                log.warning(
                    "tracking: %s stopped (%s failed: %s: %s)", type(sink).__name__, method, type(exc).__name__, exc
                )
                self.sinks.remove(sink)
                _close_all([sink], "FAILED")


def _close_all(sinks: Iterable[_Sink], status: str) -> None:
    for sink in sinks:
        try:
            sink.close(status)
        except Exception as exc:
            log.warning("tracking: closing %s failed: %s: %s", type(sink).__name__, type(exc).__name__, exc)
