"""``strategy.name`` -> Flower 1.42's Message-API strategy class and its typed parameters.

Confide writes no aggregation rule of its own: every name maps to the class Flower ships, built
with the parameters declared in ``StrategyConfig`` (common/config/strategy.py). Confide's update checks,
per-site records and central DP sit around it (server/strategy.py, server/central_dp.py).

Families:
- averaging: ``fedavg``; ``fedprox`` (FedAvg on the server; the proximal term is in each site's
  local training, common/train.py);
- server optimizers: ``fedavgm`` (server momentum), ``fedadam``, ``fedyogi``, ``fedadagrad``
  (Reddi et al. 2021): the averaged update is a pseudo-gradient; their state (momentum, moments)
  is part of the checkpoint (``ConfideStrategy.server_state``);
- robust aggregators: ``fedmedian``, ``fedtrimmedavg``, ``krum``, ``multikrum``, ``bulyan``;
- fairness: ``qfedavg`` (q-FFL, Li et al. 2020), which weights sites by their training loss.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp import strategy as fl

from common.config import ExperimentConfig

CLASSES: dict[str, type[fl.FedAvg]] = {
    "fedavg": fl.FedAvg,
    "fedprox": fl.FedProx,
    "fedavgm": fl.FedAvgM,
    "fedadam": fl.FedAdam,
    "fedyogi": fl.FedYogi,
    "fedadagrad": fl.FedAdagrad,
    "qfedavg": fl.QFedAvg,
    "fedmedian": fl.FedMedian,
    "fedtrimmedavg": fl.FedTrimmedAvg,
    "krum": fl.Krum,
    "multikrum": fl.MultiKrum,
    "bulyan": fl.Bulyan,
}

# The server learning rate when strategy.server_lr is 0 (common/config/strategy.py says why these values).
DEFAULT_SERVER_LR = {"fedavgm": 1.0, "fedadam": 0.01, "fedyogi": 0.01, "fedadagrad": 0.01}


def strategy_kwargs(exp: ExperimentConfig) -> dict[str, Any]:
    """The strategy-specific constructor arguments, from the typed config."""
    s = exp.strategy
    lr = s.server_lr or DEFAULT_SERVER_LR.get(s.name, 1.0)
    if s.name == "fedprox":
        return {"proximal_mu": s.proximal_mu}
    if s.name == "fedavgm":
        return {"server_learning_rate": lr, "server_momentum": s.server_momentum}
    if s.name in ("fedadam", "fedyogi"):
        return {"eta": lr, "eta_l": exp.train.lr, "beta_1": s.beta1, "beta_2": s.beta2, "tau": s.tau}
    if s.name == "fedadagrad":
        return {"eta": lr, "eta_l": exp.train.lr, "tau": s.tau}
    if s.name == "qfedavg":
        return {"client_learning_rate": exp.train.lr, "q": s.q, "train_loss_key": "train_loss"}
    if s.name == "fedtrimmedavg":
        return {"beta": s.trim_beta}
    if s.name in ("krum", "bulyan"):
        return {"num_malicious_nodes": s.num_malicious}
    if s.name == "multikrum":
        selected = s.num_selected or max(1, exp.data.num_sites - s.num_malicious)
        return {"num_malicious_nodes": s.num_malicious, "num_nodes_to_select": selected}
    return {}


def describe(exp: ExperimentConfig) -> str:
    """One line for the log: the Flower class and its parameters."""
    args = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in strategy_kwargs(exp).items())
    return f"{CLASSES[exp.strategy.name].__name__}({args})"
