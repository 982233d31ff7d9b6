"""The experiment a ClientApp message belongs to, parsed once per run (not once per message)."""

from __future__ import annotations

import functools
from pathlib import Path

from flwr.app import Context

from common.config import ExperimentConfig, load_from_run_config

APP_DIR = Path(__file__).resolve().parents[1]


def experiment_of(context: Context, fixed: ExperimentConfig | None = None) -> ExperimentConfig:
    """``fixed`` (in-process simulations, tests), else the run config's experiment."""
    if fixed is not None:
        return fixed
    return _load(context.run_id, tuple(sorted(context.run_config.items())))


@functools.lru_cache(maxsize=8)
def _load(run_id: int, run_config: tuple) -> ExperimentConfig:
    return load_from_run_config(dict(run_config), APP_DIR)
