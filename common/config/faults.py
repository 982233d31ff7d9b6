"""The ``faults`` section: failures injected at simulated sites."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config.require import _require


@dataclass(frozen=True)
class FaultConfig:
    """Failure injection for simulations (client/faults.py): what goes wrong at the simulated sites,
    seeded by the experiment's seed and recorded in the run's metrics. Sites are partition ids;
    -1: none. A deployed site (one with its own data file) refuses any of this."""

    # Probability that a site drops out of a round (its reply is an error: "injected dropout").
    dropout: float = 0.0
    # Each reply is delayed by a uniform random 0..straggler_delay seconds (a slow site).
    straggler_delay: float = 0.0
    # This site crashes from round crash_round on (every reply an error).
    crash_site: int = -1
    crash_round: int = 1
    # This site's weight update is corrupted every round: "nan", "scale" (x corrupt_scale), "flip"
    # (sign-flipped and x corrupt_scale), "evade" (sign-flipped and scaled to 0.95 x the largest norm
    # strategy.reject_norm_ratio lets through, its own update's norm standing in for the round's
    # median; x corrupt_scale where no norm rule rejects) or "bias" (its update plus a fixed direction,
    # the same every round and at every colluding site, of norm corrupt_scale x its update's norm) or
    # "disguise" (the evading flip pushed along its honest sign pattern until its cosine to its own
    # update is just above strategy.min_cosine_to_median).
    # corrupt_count: the sites corrupt_site, corrupt_site + 1, ... that collude (the same attack).
    corrupt_site: int = -1
    corrupt: Literal["nan", "scale", "flip", "evade", "bias", "disguise"] = "flip"
    corrupt_scale: float = 10.0
    corrupt_count: int = 1
    # This site's training labels are shifted by one class (a mislabelled site).
    label_flip_site: int = -1

    def __post_init__(self) -> None:
        _require(0 <= self.dropout < 1, "faults.dropout", "must be in [0, 1)")
        _require(self.straggler_delay >= 0, "faults.straggler_delay", "must be >= 0 seconds")
        _require(self.crash_round >= 1, "faults.crash_round", "must be >= 1")
        for key in ("crash_site", "corrupt_site", "label_flip_site"):
            _require(getattr(self, key) >= -1, f"faults.{key}", "must be a site's partition id, or -1 (none)")
        _require(self.corrupt_scale > 0, "faults.corrupt_scale", "must be > 0")
        _require(self.corrupt_count >= 1, "faults.corrupt_count", "must be >= 1 (sites from faults.corrupt_site on)")

    @property
    def active(self) -> bool:
        return (
            bool(self.dropout or self.straggler_delay)
            or max(self.crash_site, self.corrupt_site, self.label_flip_site) >= 0
        )
