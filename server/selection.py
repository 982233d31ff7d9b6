"""Which global model a run exports (``strategy.final_model``).

- ``last``: the final round's global model.
- ``best_held_out``: the round whose global model had the best site-weighted accuracy on the sites'
  held-out data (the server's test set is never used to choose).
- ``tail_average``: the mean of the global models of the last ``strategy.tail_rounds`` rounds
  (Polyak-Ruppert tail averaging). Every global model is already released to the sites, so their
  mean is post-processing: under DP it costs no epsilon and needs no site metric. It is defined for
  every model; for a convex one (``model.name: linear``) the mean of models near the optimum is no
  worse than their average loss, and it damps the round-to-round swing that a shifted test set
  sees while the sites' held-out data does not.
- ``auto``: ``best_held_out`` where the sites release that accuracy, else ``last``.

The state a resumed run needs (the best round so far, the running sum of the tail) travels in the
coordinator's checkpoint (common/checkpoint.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.checkpoint import Checkpoint
from common.config import ExperimentConfig
from common.errors import ConfigError
from common.weights import Weights
from server.strategy import sites_release_evaluation

# The running sum of the tail: (first round summed, rounds summed, the sum of their weights).
Tail = tuple[int, int, Weights]


def selection_rule(exp: ExperimentConfig) -> str:
    """``strategy.final_model`` resolved: "auto" selects on held-out accuracy where the sites release it."""
    if exp.strategy.final_model == "auto":
        return "best_held_out" if strategy_evaluates(exp) else "last"
    return exp.strategy.final_model


def strategy_evaluates(exp: ExperimentConfig) -> bool:
    """Whether the sites evaluate and release their held-out accuracy in this job."""
    return sites_release_evaluation(exp) and exp.strategy.fraction_evaluate > 0


def tail_rounds(exp: ExperimentConfig) -> int:
    """``strategy.tail_rounds`` resolved: 0 is half of ``strategy.rounds``, rounded up."""
    return exp.strategy.tail_rounds or (exp.strategy.rounds + 1) // 2


class ModelSelection:
    """``strategy.final_model``: offered every round's global model, it keeps what the rule needs
    (a copy of the best round's weights, or the running sum of the tail's) and returns the export."""

    def __init__(self, rule: str, configured: str = "", rounds: int = 0, tail: int = 0) -> None:
        self.rule, self.configured = rule, configured or rule
        self.best: tuple[float, int, Weights] | None = None
        # tail_average: rounds first_tail..rounds are averaged.
        self.first_tail = rounds - tail + 1 if rule == "tail_average" else 0
        self.tail: Tail | None = None

    @classmethod
    def for_experiment(cls, exp: ExperimentConfig) -> ModelSelection:
        return cls(selection_rule(exp), exp.strategy.final_model, exp.strategy.rounds, tail_rounds(exp))

    @property
    def averages(self) -> bool:
        """Whether the export is a mean of rounds (so no round's metrics describe it)."""
        return self.rule == "tail_average"

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a stopped run's checkpoint. The tail's sum is kept only if this run averages
        the same rounds; a window that began before the checkpoint at another round (strategy.rounds
        or strategy.tail_rounds changed on resume) needs rounds the checkpoint does not hold."""
        self.best = checkpoint.best
        if not self.averages or self.first_tail > checkpoint.round:
            return  # the window begins after the checkpoint: nothing summed yet
        if checkpoint.tail is None or checkpoint.tail[0] != self.first_tail:
            had = "no tail sum" if checkpoint.tail is None else f"the sum from round {checkpoint.tail[0]}"
            raise ConfigError(
                f"config key 'strategy.tail_rounds': this run averages rounds {self.first_tail} onwards, but the "
                f"checkpoint (round {checkpoint.round}) holds {had}; resume with the stopped run's "
                "strategy.rounds and strategy.tail_rounds"
            )
        self.tail = checkpoint.tail

    def offer(self, server_round: int, line: dict[str, Any], weights: Weights) -> None:
        if self.averages:
            self._add_to_tail(server_round, weights)
            return
        accuracy = held_out(line)
        if self.rule != "best_held_out" or server_round == 0 or accuracy is None:
            return
        if self.best is None or accuracy > self.best[0]:
            self.best = (float(accuracy), server_round, {k: v.copy() for k, v in weights.items()})

    def _add_to_tail(self, server_round: int, weights: Weights) -> None:
        if server_round == 0 or server_round < self.first_tail:
            return
        if self.tail is None:
            # At least float32, so the sum of a few hundred rounds loses nothing that matters.
            total = {k: np.asarray(v, dtype=np.promote_types(v.dtype, np.float32)).copy() for k, v in weights.items()}
            self.tail = (server_round, 1, total)
            return
        first, count, total = self.tail
        for k, v in weights.items():
            total[k] += v
        self.tail = (first, count + 1, total)

    def choice(self, last_round: int, last: Weights) -> tuple[int, Weights]:
        """The exported round (for ``tail_average`` the last one averaged) and its weights."""
        if self.averages and self.tail is not None:
            _, count, total = self.tail
            return last_round, {k: _mean(v, count, last[k].dtype) for k, v in total.items()}
        if self.best is None:
            return last_round, last
        return self.best[1], self.best[2]

    def final_metrics(self, chosen: dict[str, Any], central: dict[str, Any] | None) -> dict[str, Any]:
        """The exported model's metrics: the chosen round's line, or for an average its own test
        metrics (``central``, computed on the export); no site has evaluated an average."""
        if self.averages and self.tail is not None:
            return {"central": central} if central else {}
        return {k: chosen[k] for k in ("federated", "central") if chosen.get(k)}

    def describe(self) -> str:
        if self.averages:
            if self.tail is None:
                return "the last round's global model (strategy.final_model=tail_average: no round was averaged)"
            first, count, _ = self.tail
            last = first + count - 1
            return (
                f"the mean of the global models of rounds {first}-{last} ({count} rounds; "
                "strategy.final_model=tail_average)"
            )
        if self.rule != "best_held_out":
            why = "auto: the sites release no held-out accuracy" if self.configured == "auto" else "last"
            return f"the last round's global model (strategy.final_model={why})"
        if self.best is None:
            return "the last round's global model (no round had a held-out accuracy to select on)"
        return f"round {self.best[1]}'s global model, best site-weighted held-out accuracy {self.best[0]:.4f}"


def _mean(total: np.ndarray, count: int, dtype: np.dtype) -> np.ndarray:
    mean = total / count
    if np.issubdtype(dtype, np.integer):  # a counter buffer (BatchNorm's batches seen)
        mean = np.rint(mean)
    return mean.astype(dtype)


def held_out(line: dict[str, Any]) -> float | None:
    """A round's (or the chosen model's) site-weighted held-out accuracy of the global model, where
    the sites released it. In the last round of a job with strategy.local_finetune, "accuracy" is
    of the sites' fine-tuned models, so the global model's own figure comes first."""
    federated = line.get("federated") or {}
    value = federated.get("global_accuracy", federated.get("accuracy"))
    return None if value is None else float(value)
