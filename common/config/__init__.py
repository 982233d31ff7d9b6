"""Typed experiment configuration: the one declared place for every tunable.

An experiment is a YAML file whose sections mirror the dataclasses of this package (one module per
section). Values are resolved in this order: dataclass defaults < YAML file < overrides (e.g. from
``flwr run --run-config``). Unknown keys and bad values raise ``ConfigError`` naming the dotted key,
so a typo never silently falls back to a default.

Import from here (``from common.config import ExperimentConfig``), not from the modules inside.
"""

from __future__ import annotations

from common.config.baseline import BaselineConfig
from common.config.coerce import _coerce
from common.config.data import BUILTIN_SOURCES, IMAGE_SOURCES, TEXT_SOURCES, DataConfig, DataSource
from common.config.experiment import (
    ExperimentConfig,
    _baseline_checks,
    _personalize_checks,
    _secagg_checks,
)
from common.config.faults import FaultConfig
from common.config.loading import (
    _build,
    _check_override_keys,
    _listify,
    _set_dotted,
    _suggest,
    dump,
    flat_keys,
    flatten,
    load,
    read_yaml,
    replace,
    to_dict,
)
from common.config.model import IMAGE_FEATURES, MINILM, TEXT_FEATURES, ModelConfig, ModelName
from common.config.paths import project_root, resolve_path
from common.config.privacy import PrivacyConfig
from common.config.require import _require
from common.config.run_config import EXPERIMENT_KEY, RESUME_KEY, load_from_run_config
from common.config.secagg import SecAggConfig
from common.config.strategy import ROBUST, SERVER_OPTIMIZERS, StrategyConfig, StrategyName
from common.config.tracking import TrackingConfig
from common.config.train import TrainConfig
from common.config.transport import TransportConfig

__all__ = [
    "BUILTIN_SOURCES",
    "EXPERIMENT_KEY",
    "IMAGE_FEATURES",
    "IMAGE_SOURCES",
    "MINILM",
    "RESUME_KEY",
    "ROBUST",
    "SERVER_OPTIMIZERS",
    "TEXT_FEATURES",
    "TEXT_SOURCES",
    "BaselineConfig",
    "DataConfig",
    "DataSource",
    "ExperimentConfig",
    "FaultConfig",
    "ModelConfig",
    "ModelName",
    "PrivacyConfig",
    "SecAggConfig",
    "StrategyConfig",
    "StrategyName",
    "TrackingConfig",
    "TrainConfig",
    "TransportConfig",
    "_baseline_checks",
    "_build",
    "_check_override_keys",
    "_coerce",
    "_listify",
    "_personalize_checks",
    "_require",
    "_secagg_checks",
    "_set_dotted",
    "_suggest",
    "dump",
    "flat_keys",
    "flatten",
    "load",
    "load_from_run_config",
    "project_root",
    "read_yaml",
    "replace",
    "resolve_path",
    "to_dict",
]
