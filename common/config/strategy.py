"""The ``strategy`` section: which Flower strategy aggregates, and its parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config.require import _require

StrategyName = Literal[
    "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
    "qfedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan",
]  # fmt: skip
# Families (server/strategies.py maps each name to Flower's class): server optimizers (the averaged
# update is a pseudo-gradient for momentum or Adam-style steps), robust aggregators (median,
# trimming, Krum selection: one bad site cannot move the model arbitrarily), fairness (q-FFL).
SERVER_OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")
ROBUST = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")


@dataclass(frozen=True)
class StrategyConfig:
    """Server-side orchestration: which Flower strategy aggregates, with its own parameters."""

    name: StrategyName = "fedavg"
    rounds: int = 3
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    # Minimum sites that must be connected and that must reply for a round to count.
    min_sites: int = 2
    round_timeout: float = 3600.0
    # fedprox: weight mu of the proximal term (mu/2)||w - w_global||^2 each site adds to its local
    # objective (also under DP-SGD: its gradient is data-independent and added after the noise).
    proximal_mu: float = 0.01
    # Server optimizers. server_lr 0: Confide's default per strategy (fedavgm 1.0; fedadam, fedyogi,
    # fedadagrad 0.01: an adaptive server step moves every weight by about server_lr per round, and
    # Flower's 0.1 is larger than most ResNet weights; on digits 0.01 reached 0.82 in 2 rounds, 0.03
    # 0.35). server_momentum: fedavgm's; 0.5 bounds the steady-state step at 2x the mean update (0.9,
    # Hsu et al.'s choice for hundreds of rounds, lets it grow to 10x). beta1/beta2/tau: FedAdam/
    # FedYogi/FedAdagrad's moment decays and adaptivity (Reddi et al. 2021).
    server_lr: float = 0.0
    server_momentum: float = 0.5
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    # fedtrimmedavg: fraction cut from each end per coordinate.
    trim_beta: float = 0.2
    # krum, multikrum, bulyan: Byzantine sites tolerated; multikrum: updates averaged (0: n - f).
    num_malicious: int = 0
    num_selected: int = 0
    # qfedavg: fairness exponent q (0 = FedAvg-like; larger favours worse-off sites).
    q: float = 0.1
    # Which global model is exported: "last" (the final round's) or "best_held_out" (the round with
    # the highest site-weighted accuracy on the sites' held-out data: model selection without the
    # test set). It needs the sites' evaluation: under DP only with privacy.site_metrics noisy or
    # exact, and strategy.fraction_evaluate > 0; without it the last round's model is exported and
    # the log and model card say so. "auto": best_held_out where the sites release that accuracy,
    # else last (the last round of a short or oscillating run lost 4-6 points on small real sets).
    # "tail_average": the mean of the global models of the last tail_rounds rounds (server/selection.py):
    # post-processing of models already released, so it costs no epsilon under DP and needs no site
    # metric; most sensible for a convex model (model.name: linear). tail_rounds 0: half of rounds,
    # rounded up.
    final_model: Literal["auto", "last", "best_held_out", "tail_average"] = "auto"
    tail_rounds: int = 0
    # Exclude an update whose norm (w_site - w_global) exceeds this many times the median norm of
    # the round's updates (a scaled or poisoned update); recorded with the reason under the site's
    # name. 0: off (the statistics are recorded either way: common/update_stats.py).
    reject_norm_ratio: float = 0.0
    # "median": every accepted update is scaled down to the median update norm of the round before
    # aggregation (norm bounding, Sun et al. 2019), so no site moves the model more than a typical
    # one; with any strategy and with reject_norm_ratio. "off": updates are aggregated as sent.
    # Refused under secagg and central DP (server/norm_bound.py).
    norm_bound: Literal["off", "median"] = "off"
    # Exclude an update whose cosine to the coordinate-wise median update of the round is below this
    # (a sign-flipped update sits near -1, an honest one above 0), recorded like reject_norm_ratio.
    # -1: off. Refused under secagg and central DP, as norm_bound.
    min_cosine_to_median: float = -1.0
    # Per-site personalisation (common/personalize.py). "head": the body is federated and each site
    # keeps its own classification head, which it never sends and the coordinator never aggregates
    # (FedPer/FedRep style, for skewed sites); "off": the whole model is federated.
    personalize: Literal["off", "head"] = "off"
    # Epochs of local training of the whole model at each site after the last round; the result stays
    # at the site. Only without DP (privacy.mode off): those steps run outside any DP mechanism.
    local_finetune: int = 0

    def __post_init__(self) -> None:
        _require(self.rounds >= 1, "strategy.rounds", "must be >= 1")
        _require(0 <= self.tail_rounds <= self.rounds, "strategy.tail_rounds",
                 f"must be in [0, strategy.rounds = {self.rounds}] (0: half of the rounds)")  # fmt: skip
        _require(self.local_finetune >= 0, "strategy.local_finetune", "must be >= 0 (epochs after the last round)")
        _require(
            self.reject_norm_ratio == 0 or self.reject_norm_ratio > 1,
            "strategy.reject_norm_ratio",
            "must be 0 (off) or > 1 (a multiple of the round's median update norm)",
        )
        _require(-1 <= self.min_cosine_to_median < 1, "strategy.min_cosine_to_median", "must be in [-1, 1) (-1: off)")
        _require(0 < self.fraction_train <= 1, "strategy.fraction_train", "must be in (0, 1]")
        _require(0 <= self.fraction_evaluate <= 1, "strategy.fraction_evaluate", "must be in [0, 1]")
        _require(self.min_sites >= 1, "strategy.min_sites", "must be >= 1")
        _require(self.round_timeout > 0, "strategy.round_timeout", "must be > 0")
        _require(self.proximal_mu >= 0, "strategy.proximal_mu", "must be >= 0")
        _require(self.name != "fedprox" or self.proximal_mu > 0, "strategy.proximal_mu",
                 "must be > 0 for strategy 'fedprox' (0 is FedAvg)")  # fmt: skip
        _require(self.server_lr >= 0, "strategy.server_lr", "must be >= 0 (0: the strategy's default)")
        _require(0 <= self.server_momentum < 1, "strategy.server_momentum", "must be in [0, 1)")
        _require(0 <= self.beta1 < 1, "strategy.beta1", "must be in [0, 1)")
        _require(0 <= self.beta2 < 1, "strategy.beta2", "must be in [0, 1)")
        _require(self.tau > 0, "strategy.tau", "must be > 0")
        _require(0 <= self.trim_beta < 0.5, "strategy.trim_beta", "must be in [0, 0.5)")
        _require(self.num_malicious >= 0, "strategy.num_malicious", "must be >= 0")
        _require(self.num_selected >= 0, "strategy.num_selected", "must be >= 0")
        _require(self.q >= 0, "strategy.q", "must be >= 0")

    @property
    def personalized(self) -> bool:
        """Whether sites keep a model of their own (a personal head, or a fine-tuned copy)."""
        return self.personalize != "off" or self.local_finetune > 0

    @property
    def local_proximal_mu(self) -> float:
        """The proximal weight each site's local training uses (0 unless FedProx)."""
        return self.proximal_mu if self.name == "fedprox" else 0.0

    def min_replies(self) -> int:
        """Valid updates the strategy needs to aggregate at all (robust rules need more than f)."""
        f = self.num_malicious
        return {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(self.name, 1)
