"""Site-level ("central") DP: the plan, and the coordinator's ledger of what each site spent.

Mechanism (server/central_dp.py runs it with Flower's wrappers): every sampled site's update
(its weights minus the global model) is clipped to L2 norm C, at the server or at the site; the
clipped updates are SUMMED with equal weights, Gaussian noise with standard deviation sigma*C is
added to the sum, and the sum is divided by m, the number of sites the round was SENT to (a fixed
denominator). Under add/remove-one-site adjacency the sum's sensitivity is C whatever the number
of replies, so each round is a Gaussian mechanism with noise multiplier sigma for every site that
contributed; a site that is lost or sends a malformed update makes the step smaller, never the
noise relatively weaker. Weighting by record counts (FedAvg's default) would let a large site move
the mean by up to C instead of C/m, which the noise does not cover: central DP never uses it.

Accounting: each contributing site gets one entry (sigma, 1.0, 1) per round in the coordinator's
ledger (no amplification by site sampling is claimed); a site's epsilon is the composition of all
its entries across rounds, resumed and successive runs that share the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import ExperimentConfig
from common.errors import PolicyRefused
from common.privacy.governance.ledger import Ledger, history_of
from common.privacy.mechanism.accounting import calibrate, check_delta, default_delta, epsilon


def gaussian_noise(shape: tuple[int, ...], std: float) -> np.ndarray:
    """N(0, std^2) noise for one tensor of the central release, from the OS's entropy (as every DP
    draw in Confide: common/privacy/mechanism/randomness.py), in float64 (the caller casts to the model's dtype)."""
    import torch

    from common.privacy.mechanism.randomness import secret_generator

    return torch.normal(0.0, std, size=shape, generator=secret_generator(), dtype=torch.float64).numpy()


# Train-config key by which the server asks sites to clip their own update (client-side clipping).
CLIENT_CLIPPING_KEY = "dp-client-clipping"


@dataclass(frozen=True)
class CentralPlan:
    noise_multiplier: float
    clipping_norm: float
    delta: float
    num_sites: int

    def epsilon_after(self, rounds: int) -> float:
        """A site's epsilon after contributing to ``rounds`` rounds (and nothing before)."""
        return epsilon([(self.noise_multiplier, 1.0, rounds)], self.delta, "rdp", self.num_sites)


def central_plan(exp: ExperimentConfig) -> CentralPlan:
    p, n = exp.privacy, exp.data.num_sites
    delta = check_delta(p.delta or default_delta(n), n, "privacy.delta", "n: the number of sites, data.num_sites")
    sigma = p.noise_multiplier
    if p.target_epsilon is not None:
        sigma = calibrate(p.target_epsilon, delta, 1.0, exp.strategy.rounds, "rdp")
    return CentralPlan(noise_multiplier=sigma, clipping_norm=p.clipping_norm, delta=delta, num_sites=n)


class CentralLedger:
    """The coordinator's ledger: one (sigma, 1, 1) entry per site per round it contributed to."""

    def __init__(self, path: Path, plan: CentralPlan) -> None:
        self.ledger, self.plan = Ledger.open(path), plan
        self.pending: dict[str, list[dict[str, Any]]] = {}  # reservation id -> its planned entries

    def check_can_finish(self, run: str, rounds: int, cap: float) -> None:
        """Refuse, before any site is contacted, a job whose ``rounds`` would take a site past the
        coordinator's cap (``privacy.central_max_epsilon``; 0: none): every site already in the ledger
        and a new one, each for the rounds of this job it has not yet answered."""
        if not cap:
            return
        step = (self.plan.noise_multiplier, 1.0, 1)
        sites = {str(e.get("site")) for e in self.ledger.entries}
        for site in sorted(sites) + [""]:
            mine = self.ledger.history(lambda e, s=site: e.get("site") == s)
            done = sum(1 for e in self.ledger.entries if e.get("site") == site and e.get("run") == run)
            projected = self._epsilon(mine + [step] * max(rounds - done, 0))
            if projected > cap:
                who = f"site '{site}'" if site else "a site new to this ledger"
                raise PolicyRefused(
                    f"the coordinator refuses the job: {rounds} rounds at noise multiplier "
                    f"{self.plan.noise_multiplier:.4g} would bring {who} to site-level epsilon {projected:.3f}, "
                    f"above privacy.central_max_epsilon={cap:g} (ledger {self.ledger.path})"
                )

    def reserve(self, sites: list[str], run: str, server_round: int, cap: float = 0.0) -> str:
        tags = {"kind": "central", "run": run, "round": server_round, "delta": self.plan.delta}
        planned = [
            {"site": s, "noise_multiplier": self.plan.noise_multiplier, "sample_rate": 1.0, "steps": 1, **tags}
            for s in sites
        ]

        def check(existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
            for site in sorted({e["site"] for e in new}) if cap else ():
                projected = self._epsilon(history_of([e for e in existing + new if e.get("site") == site]))
                if projected > cap:
                    raise PolicyRefused(
                        f"the coordinator refuses round {server_round}: site '{site}' would reach site-level "
                        f"epsilon {projected:.3f}, above privacy.central_max_epsilon={cap:g}"
                    )

        reservation = self.ledger.reserve(planned, check)
        self.pending[reservation] = planned
        return reservation

    def commit(self, reservation: str) -> None:
        self.ledger.commit(reservation, self.pending.pop(reservation))

    def _epsilon(self, history: list[tuple[float, float, int]]) -> float:
        return epsilon(history, self.plan.delta, "rdp", self.plan.num_sites)

    def site_epsilons(self, run: str | None = None) -> dict[str, float]:
        sites = sorted({str(e.get("site")) for e in self.ledger.entries})
        return {
            s: epsilon(
                self.ledger.history(lambda e, s=s: e.get("site") == s and (run is None or e.get("run") == run)),
                self.plan.delta,
                "rdp",
                self.plan.num_sites,
            )
            for s in sites
        }

    def as_record(self, run: str, rounds: int, summed: int | None = None, sent: int | None = None) -> dict[str, Any]:
        total, this_run = self.site_epsilons(), self.site_epsilons(run)
        return {
            "mode": "central",
            "epsilon": max(total.values(), default=0.0),
            "delta": self.plan.delta,
            "noise_multiplier": self.plan.noise_multiplier,
            "clipping_norm": self.plan.clipping_norm,
            "rounds": rounds,
            "accountant": "rdp",
            "ledger": str(self.ledger.path),
            "sites": {
                s: {"epsilon": e, "epsilon_run": this_run.get(s, 0.0), "delta": self.plan.delta}
                for s, e in total.items()
            },  # fmt: skip
            **({"updates_summed": summed, "sites_sent": sent} if summed is not None else {}),
        }
