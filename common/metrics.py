"""Metrics: classification scores, ROC AUC, weighted means, per-site tables, the JSONL round log."""

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


def binary_roc_auc(y_true: np.ndarray, probabilities: np.ndarray) -> float | None:
    """ROC AUC of a two-class task, scoring each record by its probability of the second label
    (class 1); None (not NaN) for more than two classes or when ``y_true`` holds only one class."""
    from sklearn.metrics import roc_auc_score

    if probabilities.ndim != 2 or probabilities.shape[1] != 2 or len(np.unique(y_true)) != 2:
        return None
    return float(roc_auc_score(y_true, probabilities[:, 1]))


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    total = float(sum(weights))
    if total <= 0:
        return math.nan
    return float(sum(v * w for v, w in zip(values, weights)) / total)


# Privacy figures: a site-weighted mean of them guarantees nothing, so the aggregate over sites is
# the worst site's value under the same key (the largest epsilon and delta, the smallest noise).
PRIVACY_MAX = ("epsilon", "epsilon_run", "delta")
PRIVACY_MIN = ("noise_multiplier",)


def summarize_sites(per_site: Mapping[str, Mapping[str, float]], weight_key: str = "num_examples") -> dict[str, float]:
    """Weighted mean of every metric across sites, plus the worst site's accuracy and F1. Privacy
    figures are never averaged: ``epsilon``, ``epsilon_run`` and ``delta`` are the maximum over
    sites, ``noise_multiplier`` the minimum (``PRIVACY_MAX``, ``PRIVACY_MIN``)."""
    if not per_site:
        return {}
    sites = list(per_site.values())
    weights = [float(m.get(weight_key, 0.0)) for m in sites]
    keys = sorted({k for m in sites for k in m if k != weight_key and all(k in s for s in sites)})
    out = {k: _site_aggregate(k, [float(m[k]) for m in sites], weights) for k in keys}
    out[weight_key] = float(sum(weights))
    for k in ("num_examples", "num_examples_noisy"):  # counts add up
        if k != weight_key and k in keys:
            out[k] = float(sum(float(m[k]) for m in sites))
    for k in ("accuracy", "macro_f1"):
        if k in keys:
            out[f"worst_{k}"] = float(min(m[k] for m in sites))
    return out


def _site_aggregate(key: str, values: list[float], weights: list[float]) -> float:
    if key in PRIVACY_MAX:
        return max(values)
    if key in PRIVACY_MIN:
        return min(values)
    return weighted_mean(values, weights)


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
