"""Site-level (central) DP over Flower's fixed-clipping wrapper, with accounting that is true.

Flower's ``DifferentialPrivacy{Server,Client}SideFixedClipping`` clip (or expect clipped) updates,
let the wrapped strategy aggregate, and add noise with standard deviation sigma*C/m. Two things
make its printed epsilon false in practice, and this wrapper fixes both (common/privacy/governance/central.py
states the mechanism):
- FedAvg weights updates by record counts, so one large site moves the mean by about C instead of
  C/m: here every accepted update has the same weight;
- a round with k < m valid updates averages over k while the noise is divided by m: here the
  equal-weight mean over k is scaled by k/m, i.e. the clipped updates are summed and divided by
  m, the number of sites the round was sent to, exactly the denominator of the noise.
Flower's wrapper also adds its noise after the wrapped strategy's aggregate, so a server optimizer
(FedAvgM, FedAdam) would update its momentum from the clean mean and the noise would no longer be
calibrated to what changed. Here the noised mean is computed first and the strategy's server step
is applied to it (``ConfideStrategy.server_step``): its state only ever sees the DP release.
With client-side clipping the server verifies every update's norm (a site that did not clip is
rejected as malformed: its update would exceed the sensitivity the noise covers). Every round is
recorded per contributing site in the coordinator's ledger, reserved before the noise is drawn
and committed after, so the site-level epsilon is cumulative across runs sharing the ledger.
Flower's own ``accountant=`` path is not used: it is per process (not cumulative across runs)
and skips any round with a lost site; the ledger composes the identical Gaussian events.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, clip_inputs_inplace, get_norm

from common.config import ExperimentConfig
from common.errors import UpdateError
from common.privacy.governance.central import (
    CLIENT_CLIPPING_KEY,
    CentralLedger,
    central_plan,
    gaussian_noise,
)
from common.privacy.governance.ledger_home import central_ledger
from common.weights import Weights

NORM_TOLERANCE = 1e-4  # relative slack for float32 round-off in a site's own clipping


class CentralDP(DifferentialPrivacyServerSideFixedClipping):
    def __init__(self, strategy: Any, exp: ExperimentConfig, run_id: str) -> None:
        """``strategy``: a server.strategy.ConfideStrategy (typed loosely: this module is imported by
        server.strategy, never the reverse)."""
        self.plan = central_plan(exp)
        super().__init__(strategy, self.plan.noise_multiplier, self.plan.clipping_norm, exp.data.num_sites)
        self.base = strategy
        self.client_side = exp.privacy.clip_side == "client"
        self.ledger = CentralLedger(central_ledger(exp), self.plan)
        self.cap = exp.privacy.central_max_epsilon
        self.ledger.check_can_finish(run_id, exp.strategy.rounds, self.cap)
        self.run_id = run_id
        self.sent = 0
        self.last: tuple[int, int] = (0, 0)  # (updates summed, sites sent) of the last round

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_arrays = arrays
        if self.client_side:  # the site clips its own update (client/mods.py hands it to Flower's mod)
            config[KEY_CLIPPING_NORM] = self.clipping_norm
            config[CLIENT_CLIPPING_KEY] = "fixed"
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.sent = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # the model the sites were sent: with a quantised broadcast, what they decoded (common/compress.py)
        current = self.base.broadcast or {k: v.numpy() for k, v in self.current_arrays.items()}
        check = self._check_clipped(current) if self.client_side else None
        accepted = self.base.accept_train(server_round, replies, extra_check=check)
        for msg in accepted:
            _clip_reply(msg, current, None if self.client_side else self.clipping_norm)
        arrays, metrics = self.base.mean_train(server_round, accepted)  # equal weights
        if arrays is None:
            return None, metrics
        k, m = len(accepted), max(self.sent, len(accepted))
        arrays = _shrink_towards(arrays, current, k / m)  # sum of clipped updates / m
        reservation = self.ledger.reserve(list(self.base.accepted_names), self.run_id, server_round, self.cap)
        arrays = _noised(arrays, current, self.plan.noise_multiplier * self.clipping_norm / m)  # integers pinned
        self.ledger.commit(reservation)
        self.last = (k, m)
        # The strategy's server step (momentum, Adam) sees only the noised mean: post-processing.
        return self.base.server_step(server_round, accepted[0], arrays), metrics

    def _check_clipped(self, current: Weights):
        def check(name: str, weights: Weights) -> None:
            norm = get_norm([weights[k] - current[k] for k in _learned(current)])
            if norm > self.clipping_norm * (1 + NORM_TOLERANCE):
                raise UpdateError(
                    f"update from site '{name}' has norm {norm:.4g} above the clipping norm "
                    f"{self.clipping_norm:g} it was asked to clip to (privacy.clip_side=client); not aggregated"
                )

        return check


def _learned(current: Weights) -> list[str]:
    """The floating-point tensors: the update. Integer buffers (BatchNorm's num_batches_tracked
    counts a site's steps, i.e. its data size) are not aggregated under site-level DP: they keep
    the global model's value."""
    return [k for k, v in current.items() if np.issubdtype(v.dtype, np.floating)]


def _clip_reply(msg: Message, current: Weights, clipping_norm: float | None) -> None:
    """Pin integer buffers to the global model's values and, with ``clipping_norm``, clip the
    site's update (its weights minus the global model) to that norm, in place."""
    learned = _learned(current)
    for name, record in list(msg.content.array_records.items()):
        update = [record[k].numpy().astype(current[k].dtype) - current[k] for k in learned]
        if clipping_norm is not None and get_norm(update) > 0:  # Flower's clip divides by the norm
            clip_inputs_inplace(update, clipping_norm)
        new = {k: current[k] for k in record.keys()} | {k: current[k] + u for k, u in zip(learned, update)}
        msg.content[name] = ArrayRecord({k: Array(np.asarray(v)) for k, v in new.items()})


def _noised(arrays: ArrayRecord, current: Weights, std: float) -> ArrayRecord:
    """The release: N(0, std^2) added to every learned (floating-point) tensor of the mean, in the
    global model's dtypes; integer buffers keep the global model's values. Confide's own draw (not
    Flower's wrapper's), from the OS's entropy."""
    learned = set(_learned(current))
    out = {}
    for k, v in arrays.items():
        value = v.numpy() + gaussian_noise(v.numpy().shape, std) if k in learned else current[k]
        out[k] = Array(np.asarray(value, dtype=current[k].dtype))
    return ArrayRecord(out)


def _shrink_towards(arrays: ArrayRecord, current: Weights, factor: float) -> ArrayRecord:
    """current + (arrays - current) * factor for the learned tensors, in the global model's dtypes;
    integer buffers keep the global model's values."""
    learned = set(_learned(current))
    out = {}
    for k, v in arrays.items():
        value = current[k] + (v.numpy() - current[k]) * factor if k in learned else current[k]
        out[k] = Array(np.asarray(value, dtype=current[k].dtype))
    return ArrayRecord(out)
