"""The one place Confide touches what Flower does not promise: private strategy state, the stack
of Flower's signal handler, and the in-process simulation entry point Flower 1.42 deprecates.

Everything here is pinned by tests/flower_contract/, so a Flower upgrade that moves any of it
fails there first, with a message naming what changed. Nothing outside this module reads or
writes these names.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# Where Flower 1.42's Message-API server optimizers keep their state: FedAvgM a list of momentum
# arrays in the model's tensor order; FedAdam/FedYogi/FedAdagrad dicts of first and second moments
# keyed by tensor name. Confide's checkpoint groups: "momentum", "m_t", "v_t".
MOMENTUM = "momentum_vector"
MOMENTS = ("m_t", "v_t")
STATE_GROUPS = ("momentum", *MOMENTS)

# Flower's warning when the in-process simulation entry point is used (it says to use `flwr run`;
# Confide's tests, sweeps and benchmarks need the in-process engine).
SIMULATION_DEPRECATION = "DEPRECATED FEATURE: The `run_simulation` function"


def optimizer_state(strategy: Any, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The server optimizer's state by "<group>/<tensor name>" (empty for stateless strategies)."""
    out: dict[str, np.ndarray] = {}
    momentum = getattr(strategy, MOMENTUM, None)
    if momentum is not None:
        out |= {f"momentum/{k}": np.asarray(v) for k, v in zip(list(names), momentum, strict=True)}
    for moment in MOMENTS:
        out |= {f"{moment}/{k}": np.asarray(v) for k, v in (getattr(strategy, moment, None) or {}).items()}
    return out


def keeps_state(strategy: Any, group: str) -> bool:
    """Whether the strategy keeps ``group`` state (so a checkpoint's group may be restored into it)."""
    return group in STATE_GROUPS and hasattr(strategy, MOMENTUM if group == "momentum" else group)


def load_optimizer_state(strategy: Any, names: Iterable[str], groups: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Restore what ``optimizer_state`` saved (the caller has checked every group's tensors)."""
    if "momentum" in groups:
        setattr(strategy, MOMENTUM, [np.asarray(groups["momentum"][k]) for k in names])
    for moment in MOMENTS:
        if moment in groups:
            setattr(strategy, moment, {k: np.asarray(v) for k, v in groups[moment].items()})


def exiting_signal() -> int | None:
    """The signal Flower's handler is exiting on: its ``signalnum`` argument, found up the stack
    (Flower passes only an exit code to exit handlers)."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "graceful_exit_handler" and "signalnum" in frame.f_locals:
            return int(frame.f_locals["signalnum"])
        frame = frame.f_back
    return None


def run_in_process(**kwargs: Any) -> None:
    """Flower's in-process simulation (Ray backend) with ``kwargs`` as its keyword arguments."""
    from flwr.simulation import run_simulation

    run_simulation(**kwargs)
