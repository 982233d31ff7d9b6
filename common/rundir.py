"""A run's output folder: written under ``<id>.incomplete`` and renamed when complete.

So a crashed or interrupted run never leaves a folder that looks finished. Contents:
``config.yaml`` (resolved), ``metrics.jsonl`` (one line per round), ``checkpoint.pt``
(latest global weights and the strategy's state, replaced atomically), ``model/`` (final export), ``MODEL_CARD.md``.
A run that stops early keeps the ``.incomplete`` name and says why in ``FAILED.txt``; it can be
continued from its checkpoint (``open_resumed``), in the same folder. While incomplete the folder
names its writer (``owner.json``, common/run_owner.py), so a writer killed without a word is told
from a run still going.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from common import atomic, run_owner
from common import checkpoint as ckpt_mod
from common import config as config_mod
from common.checkpoint import Checkpoint
from common.config import ExperimentConfig, resolve_path
from common.errors import ConfigError
from common.metrics import JsonlLog

INCOMPLETE = ".incomplete"
FAILED = "FAILED.txt"
RESUMES = "resumes.jsonl"

_OPEN: set[RunDir] = set()  # the folders this process is writing (record_stop finds them)


class RunDir:
    def __init__(self, exp: ExperimentConfig, run_id: str, resume: Path | None = None) -> None:
        """A new run folder, or with ``resume`` the existing incomplete folder of a stopped run
        (``open_resumed`` checks it first)."""
        self.exp = exp
        self.run_id = run_id
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="confide-checkpoint")
        self._pending: Future[None] | None = None
        if resume is not None:
            self.path = resume
            self.final = resume.with_name(resume.name.removesuffix(INCOMPLETE))
            self.metrics = JsonlLog(self.path / "metrics.jsonl")
            run_owner.claim(self.path)
            _OPEN.add(self)
            return
        base = resolve_path(exp.output_dir)
        mark_abandoned(base)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.final = base / f"{stamp}-{_slug(exp.name)}-{run_id}"
        self.path = self.final.with_name(self.final.name + INCOMPLETE)
        if self.final.exists():
            raise FileExistsError(f"run folder already exists: {self.final}")
        self.path.mkdir(parents=True, exist_ok=False)
        run_owner.claim(self.path)
        config_mod.dump(exp, self.path / "config.yaml")
        self.metrics = JsonlLog(self.path / "metrics.jsonl")
        _OPEN.add(self)

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write the checkpoint (common/checkpoint.py) in the background (the next round need not
        wait); the arrays it holds must not be changed afterwards."""
        self.wait_for_checkpoint()
        self._pending = self._writer.submit(ckpt_mod.write, self.path / ckpt_mod.FILE, checkpoint)

    def wait_for_checkpoint(self) -> None:
        if self._pending is not None:
            self._pending.result()  # re-raises a failed write
            self._pending = None

    def finish(self) -> Path:
        """Rename to the final name; only a complete run carries it."""
        self.wait_for_checkpoint()
        self._writer.shutdown()
        run_owner.release(self.path)
        os.replace(self.path, self.final)
        _OPEN.discard(self)
        self.path = self.final
        self.metrics = JsonlLog(self.final / "metrics.jsonl")
        return self.final

    def fail(self, reason: str) -> None:
        """Record why the run stopped; the folder keeps its '.incomplete' name."""
        self._writer.shutdown(wait=True)
        (self.path / FAILED).write_text(reason.rstrip() + "\n")
        run_owner.release(self.path)
        _OPEN.discard(self)


def record_stop(reason: str) -> list[Path]:
    """Say in FAILED.txt of every run folder this process is still writing why it stops (a
    signal); return those folders. Does not wait for a checkpoint being written: the previous one
    stays in place until a complete new one replaces it, so the folder stays resumable."""
    stopped = []
    for run_dir in list(_OPEN):
        if run_dir.path.is_dir() and run_dir.path.name.endswith(INCOMPLETE):
            (run_dir.path / FAILED).write_text(reason.rstrip() + "\n")
            run_owner.release(run_dir.path)
            stopped.append(run_dir.path)
        _OPEN.discard(run_dir)
    return stopped


def check_resumable(folder: Path, exp: ExperimentConfig) -> tuple[Checkpoint, list[dict]]:
    """Refuse, naming the reason, a folder that cannot continue as ``exp``; else return its
    checkpoint and its metrics history cut back to the checkpoint's round. Changes nothing."""
    folder = folder.resolve()
    if not folder.is_dir():
        raise ConfigError(f"resume: run folder {folder} does not exist")
    if not folder.name.endswith(INCOMPLETE):
        raise ConfigError(
            f"resume: {folder} is not a stopped run (its name does not end in '{INCOMPLETE}'); "
            "a complete run has nothing to resume"
        )
    writer = run_owner.alive_writer(folder)
    if writer is not None:
        raise ConfigError(
            f"resume: {folder} is still being written by process {writer}; stop that run first (flwr stop, "
            "or Ctrl-C where it runs) and resume once it has ended"
        )
    checkpoint = ckpt_mod.read(folder / ckpt_mod.FILE)
    diff = ckpt_mod.differences(checkpoint.config, exp)
    if diff:
        raise ConfigError(
            f"resume: {folder / ckpt_mod.FILE} belongs to another experiment; "
            f"{len(diff)} key(s) differ (checkpoint -> this run): "
            + "; ".join(diff[:5])
            + ("; ..." if len(diff) > 5 else "")
        )
    if exp.strategy.rounds < checkpoint.round:
        raise ConfigError(
            f"resume: strategy.rounds={exp.strategy.rounds} but the checkpoint already closed round {checkpoint.round}"
        )
    history = [line for line in _read_lines(folder / "metrics.jsonl") if int(line.get("round", -1)) <= checkpoint.round]
    if [int(line["round"]) for line in history] != list(range(checkpoint.round + 1)):
        raise ConfigError(
            f"resume: {folder / 'metrics.jsonl'} does not hold every round up to the checkpoint's round "
            f"{checkpoint.round}; the folder is not a Confide run that can be resumed"
        )
    return checkpoint, history


def open_resumed(folder: Path, exp: ExperimentConfig, run_id: str) -> tuple[RunDir, Checkpoint, list[dict]]:
    """The stopped run in ``folder``, ready to continue (``check_resumable`` first): its metrics
    history is cut back to the checkpoint's round (a round that was logged but not checkpointed is
    run again), the reason it stopped is kept in ``resumes.jsonl`` and FAILED.txt is removed."""
    checkpoint, history = check_resumable(folder, exp)
    folder = folder.resolve()
    _rewrite_lines(folder / "metrics.jsonl", history)
    JsonlLog(folder / RESUMES).append(
        {
            "run_id": run_id,
            "from_round": checkpoint.round,
            "job": checkpoint.job,
            "stopped_because": failure_of(folder),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    (folder / FAILED).unlink(missing_ok=True)
    config_mod.dump(exp, folder / "config.yaml")
    return RunDir(exp, run_id, resume=folder), checkpoint, history


def _read_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines, texts = [], path.read_text().splitlines()
    for number, text in enumerate(texts, 1):
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:  # a line cut by the crash: only the last may be, and it is dropped
            if number != len(texts):
                raise ConfigError(f"resume: {path} line {number} is not JSON; the run's history is damaged") from None
    return lines


def _rewrite_lines(path: Path, lines: list[dict]) -> None:
    atomic.write_text(path, "".join(json.dumps(line) + "\n" for line in lines))


def failure_of(folder: Path) -> str | None:
    """The recorded reason an incomplete run stopped, else why its process is gone (common/run_owner.py)."""
    path = folder / FAILED
    return path.read_text().strip() if path.is_file() else run_owner.gone(folder)


def mark_abandoned(base: Path) -> list[Path]:
    """Write FAILED.txt into each incomplete run folder under ``base`` whose process on this host
    ended without a word (killed outright), so no stopped run reads as one still going."""
    marked = []
    for folder in sorted(base.glob(f"*{INCOMPLETE}")) if base.is_dir() else []:
        if folder.is_dir() and not (folder / FAILED).exists():
            reason = run_owner.gone(folder)
            if reason is not None:
                atomic.write_text(folder / FAILED, reason + "\n")
                marked.append(folder)
    return marked


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text.strip())[:40] or "run"
