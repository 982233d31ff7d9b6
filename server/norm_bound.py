"""Norm bounding (``strategy.norm_bound: median``): every accepted update is scaled down to the
median update norm of the round before the strategy aggregates it (Sun et al. 2019, "Can you
really backdoor federated learning?", with the round's median as the bound).

A malicious site then moves the model no further than a typical honest one, whatever it sends:
a scaled or sign-flipped update that stays under ``strategy.reject_norm_ratio`` (an attacker who
knows the rule) keeps its direction but loses its weight. The median is of the round's valid
updates, so it moves only when half of them are malicious. An honest update below the median is
left as it is. The coordinator needs each site's update for this: refused under secure
aggregation (it sees only their sum) and central DP (it already clips every update to a fixed norm;
a bound from the round's median would let one site change how the others are counted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from common.config import ExperimentConfig
from common.errors import ConfigError
from common.weights import Weights


def check(exp: ExperimentConfig) -> None:
    """Refuse norm bounding and the direction rule where the coordinator cannot or must not read
    single updates."""
    st = exp.strategy
    key = "strategy.norm_bound" if st.norm_bound != "off" else "strategy.min_cosine_to_median"
    if st.norm_bound == "off" and st.min_cosine_to_median == -1:
        return
    if exp.secagg.enabled:
        raise ConfigError(
            f"config key '{key}' must be off under secagg.enabled: the coordinator sees only the sum of the "
            "updates, never one update"
        )
    if exp.privacy.mode == "central":
        raise ConfigError(
            f"config key '{key}' must be off with privacy.mode 'central': the coordinator already clips every "
            "update to privacy.clipping_norm, and a bound or exclusion taken from the round's median makes one "
            "site change how the others are counted, beyond the one-site sensitivity the noise covers"
        )


def bound_factors(norms: Mapping[str, float]) -> dict[str, float]:
    """Per site, min(1, M / ||u_i||) with M the median of ``norms`` (the round's update norms)."""
    if not norms:
        return {}
    median = float(np.median(list(norms.values())))
    return {name: min(1.0, median / n) if n > 0 else 1.0 for name, n in norms.items()}


def bounded(reference: Weights, weights: Weights, factor: float, keys: Iterable[str]) -> Weights:
    """``weights`` with the update of each tensor in ``keys`` scaled by ``factor`` around
    ``reference`` (w' = r + factor (w - r)), in the dtypes of ``weights``; other tensors as they are."""
    scaled = set(keys)
    out = {}
    for k, v in weights.items():
        if k not in scaled or factor >= 1.0:
            out[k] = v
            continue
        ref = np.asarray(reference[k], np.float64)
        out[k] = np.asarray(ref + factor * (np.asarray(v, np.float64) - ref), np.asarray(v).dtype)
    return out
