"""Metrics: classification scores, weighted means, per-site tables, the JSONL round log."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> tuple[float, float]:
    """(accuracy, macro-F1 over the classes present in y_true or y_pred)."""
    from sklearn.metrics import f1_score

    if len(y_true) == 0:
        return math.nan, math.nan
    acc = float(np.mean(y_true == y_pred))
    f1 = float(
        f1_score(y_true, y_pred, average="macro", labels=np.unique(np.concatenate([y_true, y_pred])), zero_division=0)
    )
    return acc, f1


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    total = float(sum(weights))
    if total <= 0:
        return math.nan
    return float(sum(v * w for v, w in zip(values, weights)) / total)


def summarize_sites(per_site: Mapping[str, Mapping[str, float]], weight_key: str = "num_examples") -> dict[str, float]:
    """Weighted mean of every metric across sites, plus the worst site's accuracy and F1."""
    if not per_site:
        return {}
    weights = [float(m.get(weight_key, 0.0)) for m in per_site.values()]
    keys = sorted({k for m in per_site.values() for k in m if k != weight_key})
    out = {
        k: weighted_mean([float(m[k]) for m in per_site.values()], weights)
        for k in keys
        if all(k in m for m in per_site.values())
    }
    out[weight_key] = float(sum(weights))
    for k in ("num_examples", "num_examples_noisy"):  # counts add up
        if k != weight_key and all(k in m for m in per_site.values()):
            out[k] = float(sum(float(m[k]) for m in per_site.values()))
    for k in ("accuracy", "macro_f1"):
        if all(k in m for m in per_site.values()):
            out[f"worst_{k}"] = float(min(m[k] for m in per_site.values()))
    return out


class JsonlLog:
    """Append-only JSON-lines file; each line flushed so a crash leaves whole lines only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: Mapping[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(_plain(record), sort_keys=False) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
