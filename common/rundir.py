"""A run's output folder: written under ``<id>.incomplete`` and renamed when complete.

So a crashed or interrupted run never leaves a folder that looks finished. Contents:
``config.yaml`` (resolved), ``metrics.jsonl`` (one line per round), ``checkpoint.pt``
(latest global weights, replaced atomically), ``model/`` (final export), ``MODEL_CARD.md``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from common import config as config_mod
from common.config import ExperimentConfig, resolve_path
from common.metrics import JsonlLog
from common.weights import Weights

INCOMPLETE = ".incomplete"


class RunDir:
    def __init__(self, exp: ExperimentConfig, run_id: str) -> None:
        self.exp = exp
        base = resolve_path(exp.output_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.final = base / f"{stamp}-{_slug(exp.name)}-{run_id}"
        self.path = self.final.with_name(self.final.name + INCOMPLETE)
        if self.final.exists():
            raise FileExistsError(f"run folder already exists: {self.final}")
        self.path.mkdir(parents=True, exist_ok=False)
        config_mod.dump(exp, self.path / "config.yaml")
        self.metrics = JsonlLog(self.path / "metrics.jsonl")

    def save_checkpoint(self, weights: Weights, server_round: int) -> None:
        tmp = self.path / "checkpoint.pt.tmp"
        torch.save({"round": server_round, "state_dict": {k: torch.as_tensor(v) for k, v in weights.items()}}, tmp)
        os.replace(tmp, self.path / "checkpoint.pt")

    def finish(self) -> Path:
        """Rename to the final name; only a complete run carries it."""
        os.replace(self.path, self.final)
        self.path = self.final
        self.metrics = JsonlLog(self.final / "metrics.jsonl")
        return self.final

    def discard_if_empty(self) -> None:
        if self.path.name.endswith(INCOMPLETE) and not (self.path / "metrics.jsonl").exists():
            shutil.rmtree(self.path, ignore_errors=True)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text.strip())[:40] or "run"
