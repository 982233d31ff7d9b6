"""A run's output folder: written under ``<id>.incomplete`` and renamed when complete.

So a crashed or interrupted run never leaves a folder that looks finished. Contents:
``config.yaml`` (resolved), ``metrics.jsonl`` (one line per round), ``checkpoint.pt``
(latest global weights and the strategy's state, replaced atomically), ``model/`` (final export), ``MODEL_CARD.md``.
A run that stops early keeps the ``.incomplete`` name and says why in ``FAILED.txt``.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from common import config as config_mod
from common.config import ExperimentConfig, resolve_path
from common.metrics import JsonlLog
from common.weights import Weights

INCOMPLETE = ".incomplete"
FAILED = "FAILED.txt"
CHECKPOINT_FORMAT = 1


class RunDir:
    def __init__(self, exp: ExperimentConfig, run_id: str) -> None:
        self.exp = exp
        self.run_id = run_id
        base = resolve_path(exp.output_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.final = base / f"{stamp}-{_slug(exp.name)}-{run_id}"
        self.path = self.final.with_name(self.final.name + INCOMPLETE)
        if self.final.exists():
            raise FileExistsError(f"run folder already exists: {self.final}")
        self.path.mkdir(parents=True, exist_ok=False)
        config_mod.dump(exp, self.path / "config.yaml")
        self.metrics = JsonlLog(self.path / "metrics.jsonl")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="confide-checkpoint")
        self._pending: Future[None] | None = None

    def save_checkpoint(self, weights: Weights, server_round: int, server_state: Weights | None = None) -> None:
        """Write the latest global weights and the strategy's own state (server momentum, Adam
        moments: ``ConfideChecks.server_state``) in the background (the next round need not wait)."""
        self.wait_for_checkpoint()
        self._pending = self._writer.submit(self._write_checkpoint, weights, server_round, server_state or {})

    def wait_for_checkpoint(self) -> None:
        if self._pending is not None:
            self._pending.result()  # re-raises a failed write
            self._pending = None

    def _write_checkpoint(self, weights: Weights, server_round: int, server_state: Weights) -> None:
        tmp = self.path / "checkpoint.pt.tmp"
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "round": server_round,
                "strategy": self.exp.strategy.name,
                "state_dict": {k: torch.as_tensor(v) for k, v in weights.items()},
                "server_state": {k: torch.as_tensor(v) for k, v in server_state.items()},
            },
            tmp,
        )
        os.replace(tmp, self.path / "checkpoint.pt")

    def finish(self) -> Path:
        """Rename to the final name; only a complete run carries it."""
        self.wait_for_checkpoint()
        self._writer.shutdown()
        os.replace(self.path, self.final)
        self.path = self.final
        self.metrics = JsonlLog(self.final / "metrics.jsonl")
        return self.final

    def fail(self, reason: str) -> None:
        """Record why the run stopped; the folder keeps its '.incomplete' name."""
        self._writer.shutdown(wait=True)
        (self.path / FAILED).write_text(reason.rstrip() + "\n")


def failure_of(folder: Path) -> str | None:
    """The recorded reason an incomplete run stopped, if any."""
    path = folder / FAILED
    return path.read_text().strip() if path.is_file() else None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text.strip())[:40] or "run"
