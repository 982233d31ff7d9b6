"""The ``tracking`` section: TensorBoard and MLflow output of the coordinator."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking (common/tracking.py): TensorBoard event files and MLflow runs, written by
    the coordinator only (what it already holds: the config, per-round metrics, privacy figures)."""

    tensorboard: bool = False
    mlflow: bool = False
    # MLflow tracking URI; "": a SQLite store in the output folder (output_dir/mlflow.db).
    mlflow_uri: str = ""
    # MLflow experiment name; "": the experiment's name.
    mlflow_experiment: str = ""
