"""The DP-step regression guard: a dp_throughput result's ratios against plain training (measured
in the same run) checked against thresholds kept in the repository, and the docs table made from
a result file, so the figures in docs/benchmarks.md are the file's.

Thresholds file (JSON)::

    {"reference": "benchmarks/results/dp_throughput-....json",   # the committed run they pass on
     "thresholds": {"minilm:bookkeeping": {"train_mem_vs_plain_max": 1.2, ...}, ...}}

Each metric is a row field of the result (``speed_vs_plain``, ``cpu_speed_vs_plain``,
``peak_vs_plain``, ``train_mem_vs_plain``) with ``_min`` or ``_max``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = REPO / "benchmarks" / "dp_throughput_thresholds.json"
METRICS = ("speed_vs_plain", "cpu_speed_vs_plain", "peak_vs_plain", "train_mem_vs_plain")
Thresholds = dict[tuple[str, str], dict[str, float]]


class CheckInputError(ValueError):
    """A thresholds or result file that cannot be read as one; the message names file and key."""


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckInputError(f"{what} {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise CheckInputError(f"{what} {path}: not JSON ({e.msg}, line {e.lineno})") from None


def load_thresholds(path: Path = THRESHOLDS) -> tuple[Thresholds, str | None]:
    """The thresholds by (model, variant), and the reference result file they were set on."""
    data = _read_json(path, "thresholds file")
    table = data.get("thresholds") if isinstance(data, dict) else None
    if not isinstance(table, dict) or not table:
        raise CheckInputError(f"thresholds file {path}: key 'thresholds' must be a non-empty object")
    out: Thresholds = {}
    for key, limits in table.items():
        model, _, variant = key.partition(":")
        if not model or not variant:
            raise CheckInputError(f"thresholds file {path}: key {key!r} must be 'model:variant'")
        if not isinstance(limits, dict) or not limits:
            raise CheckInputError(f"thresholds file {path}: {key!r} must map metrics to numbers")
        for name, value in limits.items():
            metric, _, bound = name.rpartition("_")
            if metric not in METRICS or bound not in ("min", "max"):
                raise CheckInputError(
                    f"thresholds file {path}: {key}.{name} is not one of {', '.join(METRICS)} with _min or _max"
                )
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise CheckInputError(f"thresholds file {path}: {key}.{name} must be a finite number")
        out[(model, variant)] = {k: float(v) for k, v in limits.items()}
    reference = data.get("reference")
    return out, reference if isinstance(reference, str) else None


def load_rows(path: Path) -> list[dict[str, Any]]:
    data = _read_json(path, "result file")
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise CheckInputError(f"result file {path}: key 'rows' (a list) is missing")
    return rows


def violations(rows: list[dict[str, Any]], thresholds: Thresholds) -> list[str]:
    """One line per threshold crossed, or per thresholded row or metric the result lacks."""
    by_key = {(r.get("model"), r.get("variant")): r for r in rows}
    out = []
    for (model, variant), limits in thresholds.items():
        row = by_key.get((model, variant))
        if row is None:
            out.append(f"{model}:{variant}: no row in the result (run it with its plain baseline)")
            continue
        for name, limit in limits.items():
            metric, _, bound = name.rpartition("_")
            value = row.get(metric)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                out.append(f"{model}:{variant}: {metric} missing (is the plain row in the same run?)")
            elif (bound == "min" and value < limit) or (bound == "max" and value > limit):
                sign = "<" if bound == "min" else ">"
                out.append(f"{model}:{variant}: {metric} = {value:.3f} {sign} {bound} {limit:g}")
    return out


# --------------------------------------------------------------------------- docs table

NAMES = {"minilm": "MiniLM", "resnet18": "ResNet-18"}
VARIANT_NAMES = {
    "plain": "non-private",
    "plain-gn": "non-private (GroupNorm)",
    "hooks": "DP, Opacus hooks",
    "ghost": "DP, Opacus ghost",
    "bookkeeping": "DP, **book-keeping** (default)",
    "bookkeeping-unsplit": "DP, book-keeping, Poisson batches in one pass",
    "lora": "LoRA r=8, non-private",
    "lora-ghost": "LoRA r=8 + DP, ghost",
    "lora-bookkeeping": "LoRA r=8 + DP, **book-keeping**",
}


def markdown(rows: list[dict[str, Any]], device: str = "CPU") -> str:
    """The docs table of a result: speed the median over repeats, memory the largest, ratios against
    plain of the same run, and the largest training batch of any repeat (DP: Poisson-sampled)."""

    def num(v: Any, digits: int) -> str:
        return f"{v:.{digits}f}" if isinstance(v, (int, float)) and math.isfinite(v) else "–"

    head = (
        "| device | model | variant | samples/s (each repeat) | × plain | samples/CPU-s | × plain "
        "| peak RSS MiB | × plain | train mem MiB | × plain | largest batch |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        repeats = ", ".join(f"{x:.1f}" for x in r.get("samples_per_s_all", []))
        cells = [
            device,
            NAMES.get(r["model"], r["model"]),
            VARIANT_NAMES.get(r["variant"], r["variant"]),
            f"{num(r['samples_per_s'], 1)} ({repeats})",
            num(r.get("speed_vs_plain"), 2),
            num(r["samples_per_cpu_s"], 1),
            num(r.get("cpu_speed_vs_plain"), 2),
            num(r["peak_rss_mib"], 0),
            num(r.get("peak_vs_plain"), 2),
            num(r["train_mem_mib"], 0),
            num(r.get("train_mem_vs_plain"), 2),
            num(r.get("largest_batch"), 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| GPU | – | – | not measured: no GPU was lent to this work | | | | | | | | |")
    return "\n".join(lines)
