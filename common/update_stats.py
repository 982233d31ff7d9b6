"""Per-update statistics the coordinator computes on what it received, and its norm rule.

For each site's update u_i = w_i - w_global (the weight tensors, not buffers that are statistics):
its L2 norm, its norm over the median norm of the round's updates, and its cosine to the
coordinate-wise median update. A sign-flipped or scaled update stands out on both (cosine near -1,
ratio near its scale). These are computed from the released weights only, and ``outliers`` applies
the optional rules ``strategy.reject_norm_ratio`` and ``strategy.min_cosine_to_median``.

Under central DP the coordinator clips every update to norm C before anything else reads it, so
the statistics are computed on the clipped updates (``clip_norm``): nothing a run records says more
about an update than the clipped update the coordinator is trusted with (no norm above C).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from common.weights import Weights


def _floating(reference: Weights, skip: Iterable[str] = ()) -> list[str]:
    skipped = set(skip)
    return [k for k, v in reference.items() if k not in skipped and np.issubdtype(np.asarray(v).dtype, np.floating)]


def clip_factors(reference: Weights, updates: Mapping[str, Weights], clip_norm: float) -> dict[str, float]:
    """Per site, min(1, C / ||u_i||) with the norm over every floating-point tensor (the update
    central DP clips: weights and float buffers alike), so ``factor * u_i`` is the clipped update."""
    keys = _floating(reference)
    out = {}
    for name, weights in updates.items():
        squared = sum(
            float(np.sum((np.asarray(weights[k], np.float64) - np.asarray(reference[k], np.float64)) ** 2))
            for k in keys
        )
        norm = float(np.sqrt(squared))
        out[name] = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return out


def update_statistics(
    reference: Weights,
    updates: Mapping[str, Weights],
    skip: Iterable[str] = (),
    clip_norm: float | None = None,
) -> dict[str, dict[str, float]]:
    """Per site: ``update_norm``, ``update_norm_ratio`` (to the round's median norm) and
    ``update_cosine_to_median`` (to the coordinate-wise median update; 1.0 for a lone site).
    With ``clip_norm`` every update is first clipped to that L2 norm (``clip_factors``), and the
    statistics describe the clipped updates. Accumulated tensor by tensor, so only one tensor's
    updates are held at a time (a full BERT update is 90 MB per site)."""
    keys = _floating(reference, skip)
    names = list(updates)
    if not names or not keys:
        return {}
    factors = clip_factors(reference, updates, clip_norm) if clip_norm is not None else dict.fromkeys(names, 1.0)
    scale = np.array([factors[n] for n in names])[:, None]
    squared, dots, median_squared = np.zeros(len(names)), np.zeros(len(names)), 0.0
    for k in keys:
        deltas = np.stack([np.asarray(updates[n][k], np.float64).ravel() for n in names])
        deltas -= np.asarray(reference[k], np.float64).ravel()
        deltas *= scale
        median = np.median(deltas, axis=0)
        squared += np.einsum("ij,ij->i", deltas, deltas)
        dots += deltas @ median
        median_squared += float(median @ median)
    norms = np.sqrt(squared)
    median_norm = float(np.median(norms))
    median_len = float(np.sqrt(median_squared))
    out = {}
    for i, name in enumerate(names):
        denom = norms[i] * median_len
        out[name] = {
            "update_norm": float(norms[i]),
            "update_norm_ratio": float(norms[i] / median_norm) if median_norm > 0 else 1.0,
            "update_cosine_to_median": float(dots[i] / denom) if denom > 0 else 1.0,
        }
    return out


def outliers(stats: Mapping[str, Mapping[str, float]], max_ratio: float, min_cosine: float = -1.0) -> dict[str, str]:
    """Sites whose update norm exceeds ``max_ratio`` x the round's median norm (``max_ratio`` 0: that
    rule is off) or whose cosine to the median update is below ``min_cosine`` (-1: off), with the
    reason."""
    out = {}
    for name, s in stats.items():
        if max_ratio and s["update_norm_ratio"] > max_ratio:
            out[name] = (
                f"update norm {s['update_norm']:.4g} is {s['update_norm_ratio']:.1f}x the median of this round's "
                f"updates, above strategy.reject_norm_ratio={max_ratio:g}"
            )
        elif min_cosine > -1 and s["update_cosine_to_median"] < min_cosine:
            out[name] = (
                f"update's cosine to the median update of this round is {s['update_cosine_to_median']:.2f}, below "
                f"strategy.min_cosine_to_median={min_cosine:g}"
            )
    return out
