"""Where a sweep cell's files live, and the atomic writes that make "done" trustworthy.

    <out>/cells/<cell id>/cell.yaml      the cell's grid values and resolved experiment
    <out>/cells/<cell id>/runs/<run>/    the simulation's run folder (see common/rundir.py)
    <out>/cells/<cell id>/result.json    written last, via a temp file and a rename
    <out>/cells/<cell id>/FAILED.txt     why the last attempt failed (the cell is not done)
    <out>/cells/<cell id>/cell.log       the cell's output, when a parallel sweep ran it in its own process

A cell counts as done only when ``result.json`` parses and names the cell: it is written after
the run finished and the audit ran, and the rename is atomic, so a sweep killed at any moment
leaves either a complete result or none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import atomic as common_atomic

PLAN = "sweep.json"  # the expanded sweep, in the output folder
RESULT = "result.json"
FAILED = "FAILED.txt"
CELL_LOG = "cell.log"


def cell_dir(out: Path, cell_id: str) -> Path:
    return out / "cells" / cell_id


def load_result(folder: Path, cell_id: str | None = None) -> dict[str, Any] | None:
    """The cell's result if it is complete (and for ``cell_id``, when given), else None."""
    path = folder / RESULT
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(result, dict) or (cell_id is not None and result.get("cell_id") != cell_id):
        return None
    return result


def record_failure(folder: Path, reason: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / FAILED, reason.rstrip() + "\n")


def failure_of(folder: Path) -> str | None:
    path = folder / FAILED
    return path.read_text().strip() if path.is_file() else None


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same folder, flushed to disk, then renamed over the target."""
    common_atomic.write_text(path, text)
