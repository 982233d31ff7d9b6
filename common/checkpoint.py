"""The coordinator's checkpoint: everything a stopped run needs to continue from its last round.

One file (``checkpoint.pt`` in the run folder), written to a temporary name, flushed and renamed,
so a crash leaves the previous round's checkpoint or the new one, never half of one. It holds the
global weights, the round they close, the job id (the Flower run id of the run that started the
job: sites key their privacy ledgers by it, so a resumed job's epsilon continues), the resolved
experiment it belongs to, the strategy's own state (server momentum, Adam moments), the model
selection's state (best_held_out's best round; tail_average's running sum of the rounds averaged so
far: server/selection.py), and the coordinator's random-number states (Flower samples sites with
Python's ``random``). Privacy accountants are not in it: every party's spending is in its own
ledger on disk (the coordinator's for central DP), which a resumed job keeps composing.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import atomic
from common import config as config_mod
from common.config import ExperimentConfig
from common.errors import ConfigError
from common.weights import Weights

FORMAT = 2
FILE = "checkpoint.pt"

# Keys a resumed run may change: how long and where it runs and what it logs, not what it computes.
MAY_DIFFER = frozenset(
    {"strategy.rounds", "strategy.round_timeout", "train.threads", "train.device", "output_dir"}
    | {"tracking.tensorboard", "tracking.mlflow", "tracking.mlflow_uri", "tracking.mlflow_experiment"}
)


@dataclass
class Checkpoint:
    round: int
    job: str
    config: dict[str, Any]  # the resolved experiment, flattened to dotted keys
    weights: Weights
    server_state: Weights = field(default_factory=dict)
    best: tuple[float, int, Weights] | None = None  # best_held_out's choice so far: (accuracy, round, weights)
    rng: dict[str, Any] = field(default_factory=dict)
    tail: tuple[int, int, Weights] | None = None  # tail_average's sum so far: (first round, rounds summed, sum)


def capture_rng() -> dict[str, Any]:
    """The coordinator process's random states (Python's drives Flower's site sampling)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    if "python" in state:
        random.setstate(_tuples(state["python"]))
    if "numpy" in state:
        np.random.set_state(_tuples(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))


def flat_config(exp: ExperimentConfig) -> dict[str, Any]:
    return config_mod.flatten(config_mod.to_dict(exp))


def write(path: Path, ckpt: Checkpoint) -> None:
    """Atomically replace ``path``: a temporary file, fsync'd, then renamed over it."""
    payload = {
        "format": FORMAT,
        "round": ckpt.round,
        "job": ckpt.job,
        "strategy": ckpt.config.get("strategy.name"),
        "config": ckpt.config,
        "state_dict": _tensors(ckpt.weights),
        "server_state": _tensors(ckpt.server_state),
        "best": None
        if ckpt.best is None
        else {"accuracy": ckpt.best[0], "round": ckpt.best[1], "state_dict": _tensors(ckpt.best[2])},  # fmt: skip
        "rng": {k: _plain(v) for k, v in ckpt.rng.items()},
        "tail": None
        if ckpt.tail is None
        else {"first": ckpt.tail[0], "count": ckpt.tail[1], "state_dict": _tensors(ckpt.tail[2])},  # fmt: skip
    }
    with atomic.replacing(path) as f:
        torch.save(payload, f)


def read(path: Path) -> Checkpoint:
    """Load a checkpoint, refusing anything that is not a complete one of this format."""
    if not path.is_file():
        raise ConfigError(f"no checkpoint to resume from: {path} does not exist (the run stopped before round 1 ended)")
    try:
        raw = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        raise ConfigError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); it is not a Confide checkpoint"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ConfigError(f"checkpoint {path} has format {found!r}; this version resumes format {FORMAT} only")
    missing = [k for k in ("round", "job", "config", "state_dict", "server_state", "rng") if k not in raw]
    if missing:
        raise ConfigError(f"checkpoint {path} lacks {', '.join(missing)}; it cannot be resumed")
    best, tail = raw.get("best"), raw.get("tail")
    return Checkpoint(
        round=int(raw["round"]),
        job=str(raw["job"]),
        config=dict(raw["config"]),
        weights=_arrays(raw["state_dict"]),
        server_state=_arrays(raw["server_state"]),
        best=None if best is None else (float(best["accuracy"]), int(best["round"]), _arrays(best["state_dict"])),
        rng=dict(raw["rng"]),
        tail=None if tail is None else (int(tail["first"]), int(tail["count"]), _arrays(tail["state_dict"])),
    )


def differences(saved: dict[str, Any], exp: ExperimentConfig) -> list[str]:
    """The experiment keys whose value differs from the checkpoint's (beyond ``MAY_DIFFER``),
    each as "key: checkpoint value -> this run's value"."""
    now = flat_config(exp)
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in MAY_DIFFER:
            continue
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if _norm(a) != _norm(b):
            out.append(f"{key}: {_show(a)} -> {_show(b)}")
    return out


def _norm(value: Any) -> Any:
    return tuple(_norm(v) for v in value) if isinstance(value, (list, tuple)) else value


def _show(value: Any) -> str:
    text = repr(_norm(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _tensors(weights: Weights) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.array(v, order="C")) for k, v in weights.items()}  # a copy, 0-d kept


def _arrays(tensors: Any) -> Weights:
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise ConfigError("checkpoint tensors are not a name -> tensor mapping; it cannot be resumed")
    return {str(k): v.numpy() for k, v in tensors.items()}


def _plain(value: Any) -> Any:
    """Random states as what ``torch.load(weights_only=True)`` accepts: lists, ints, tensors."""
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value.astype(np.int64))
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy().astype(np.uint32)
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
