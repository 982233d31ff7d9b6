"""An experiment from a Flower run config (``flwr run --run-config``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.config.experiment import ExperimentConfig
from common.config.loading import load
from common.config.paths import resolve_path

EXPERIMENT_KEY = "experiment"
# Run-config key naming a stopped run's folder to continue (server/app.py); not an experiment key.
RESUME_KEY = "resume"


def load_from_run_config(run_config: Mapping[str, Any], app_dir: Path) -> ExperimentConfig:
    """Resolve an experiment from a Flower run config.

    ``experiment`` names the YAML file (relative to the app folder or the project root);
    every other key is a dotted override. Empty strings mean "not overridden" because
    Flower only accepts overrides for keys declared in pyproject.toml, where each key is
    declared with "" as its default.
    """
    exp_path = str(run_config.get(EXPERIMENT_KEY, "") or "")
    path: Path | None = None
    if exp_path:
        candidates = (
            [Path(exp_path)]
            if Path(exp_path).is_absolute()
            else [
                app_dir / exp_path,
                resolve_path(exp_path),
            ]
        )
        path = next((p for p in candidates if p.is_file()), candidates[-1])
    overrides = {k: v for k, v in run_config.items() if k not in (EXPERIMENT_KEY, RESUME_KEY) and v != ""}
    return load(path, overrides)
