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

from common.config import ExperimentConfig, resolve_path
from common.privacy.accounting import calibrate, check_delta, default_delta, epsilon
from common.privacy.ledger import Ledger

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
    if p.target_epsilon > 0:
        sigma = calibrate(p.target_epsilon, delta, 1.0, exp.strategy.rounds, "rdp")
    return CentralPlan(noise_multiplier=sigma, clipping_norm=p.clipping_norm, delta=delta, num_sites=n)


def central_ledger_path(exp: ExperimentConfig) -> Path:
    return resolve_path(exp.privacy.central_ledger or str(Path(exp.output_dir) / "ledgers" / "central.json"))


class CentralLedger:
    """The coordinator's ledger: one (sigma, 1, 1) entry per site per round it contributed to."""

    def __init__(self, path: Path, plan: CentralPlan) -> None:
        self.ledger, self.plan = Ledger.open(path), plan
        self.pending: dict[str, list[dict[str, Any]]] = {}  # reservation id -> its planned entries

    def reserve(self, sites: list[str], run: str, server_round: int) -> str:
        tags = {"kind": "central", "run": run, "round": server_round, "delta": self.plan.delta}
        planned = [
            {"site": s, "noise_multiplier": self.plan.noise_multiplier, "sample_rate": 1.0, "steps": 1, **tags}
            for s in sites
        ]
        reservation = self.ledger.reserve(planned, lambda existing, new: None)
        self.pending[reservation] = planned
        return reservation

    def commit(self, reservation: str) -> None:
        self.ledger.commit(reservation, self.pending.pop(reservation))

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
            "sites": {s: {"epsilon": e, "epsilon_run": this_run.get(s, 0.0), "delta": self.plan.delta}
                      for s, e in total.items()},  # fmt: skip
            **({"updates_summed": summed, "sites_sent": sent} if summed is not None else {}),
        }
