"""The ``secagg`` section: secure aggregation (SecAgg+)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config.require import _require


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation (Flower's SecAgg+, server/secagg.py and client/app.py): the server learns
    only the sum of the sampled sites' updates. Sites mask their quantised update with pairwise
    and private masks; the masks cancel in the sum once enough sites reveal their shares."""

    enabled: bool = False
    # Each site secret-shares with this fraction of the round's sampled sites (1.0: all of them;
    # Flower's num_shares as a fraction).
    shares: float = 1.0
    # Fraction of a site's shares needed to rebuild its secrets; the round survives as long as this
    # many of each site's share-holders reply (Flower's reconstruction_threshold as a fraction).
    threshold: float = 0.67
    # Every element of a site's update (w_site - w_global, after DP noise) is clipped to
    # [-clip_range, clip_range] and quantised to quantization_range levels over that interval.
    clip_range: float = 8.0
    quantization_range: int = 4194304

    def __post_init__(self) -> None:
        _require(0 < self.shares <= 1, "secagg.shares", "must be in (0, 1]")
        _require(0 < self.threshold <= 1, "secagg.threshold", "must be in (0, 1]")
        _require(self.clip_range > 0, "secagg.clip_range", "must be > 0")
        _require(self.quantization_range >= 2**8, "secagg.quantization_range", "must be >= 256")
