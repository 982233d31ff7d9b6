"""Per-update statistics the coordinator computes on what it received, and its norm rule.

For each site's update u_i = w_i - w_global (the weight tensors, not buffers that are statistics):
its L2 norm, its norm over the median norm of the round's updates, and its cosine to the
coordinate-wise median update. A sign-flipped or scaled update stands out on both (cosine near -1,
ratio near its scale). These are computed from the released weights only (post-processing: no
privacy cost), and ``outliers`` applies the optional rule ``strategy.reject_norm_ratio``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from common.weights import Weights


def update_statistics(
    reference: Weights, updates: Mapping[str, Weights], skip: Iterable[str] = ()
) -> dict[str, dict[str, float]]:
    """Per site: ``update_norm``, ``update_norm_ratio`` (to the round's median norm) and
    ``update_cosine_to_median`` (to the coordinate-wise median update; 1.0 for a lone site).
    Accumulated tensor by tensor, so only one tensor's updates are held at a time (a full BERT
    update is 90 MB per site)."""
    skipped = set(skip)
    keys = [k for k, v in reference.items() if k not in skipped and np.issubdtype(np.asarray(v).dtype, np.floating)]
    names = list(updates)
    if not names or not keys:
        return {}
    squared, dots, median_squared = np.zeros(len(names)), np.zeros(len(names)), 0.0
    for k in keys:
        deltas = np.stack([np.asarray(updates[n][k], np.float64).ravel() for n in names])
        deltas -= np.asarray(reference[k], np.float64).ravel()
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


def outliers(stats: Mapping[str, Mapping[str, float]], max_ratio: float) -> dict[str, str]:
    """Sites whose update norm exceeds ``max_ratio`` x the round's median norm, with the reason
    (``max_ratio`` 0: the rule is off)."""
    if not max_ratio:
        return {}
    return {
        name: f"update norm {s['update_norm']:.4g} is {s['update_norm_ratio']:.1f}x the median of this round's "
        f"updates, above strategy.reject_norm_ratio={max_ratio:g}"
        for name, s in stats.items()
        if s["update_norm_ratio"] > max_ratio
    }
