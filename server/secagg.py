"""Secure aggregation: a round's training under Flower's SecAgg+ (``secagg.enabled``).

Flower 1.42 ships SecAgg+ as ``flwr.server.workflow.SecAggPlusWorkflow`` (server) and
``flwr.client.mod.secaggplus_mod`` (site). The workflow drives the protocol's four stages (setup,
share keys, collect masked vectors, unmask) over the Message API's ``Grid`` but still speaks the
legacy strategy interface: it asks a ``flwr.server.strategy.Strategy`` for ``configure_fit`` and
hands ``aggregate_fit`` the unmasked sum only. Here that legacy strategy is a thin adapter: it
hands out the train messages Confide's strategy made (sampling, config, central-DP keys) and keeps
what the workflow unmasked. Confide's strategy never sees a site's update: it receives one
aggregate, applies its server step (FedAvgM momentum, FedAdam...) or central DP's accounting, and
records the sites' scalar metrics, which travel in the clear as in a plain round.

What the sites mask is their update (w_site - w_global, floating-point tensors only; integer
buffers such as BatchNorm's step counter keep the global model's value), clipped elementwise to
``secagg.clip_range`` and quantised to ``secagg.quantization_range`` levels with Flower's
stochastic (unbiased) rounding. Weights are uniform: one site, one vote (record-count weighting
would need a public bound on every site's count and costs precision; see docs/secagg.md).

Central DP under SecAgg+: the coordinator cannot clip or noise what it never sees, so each site
clips its own update (Flower's fixedclipping_mod, as with privacy.clip_side=client) and adds
Gaussian noise of standard deviation sigma*C/sqrt(t), t the protocol's reconstruction threshold:
Flower unmasks the sum of any t survivors, whatever strategy.min_sites says (that check runs after
the sum is unmasked). The sum of k >= t updates then carries noise of at least sigma*C, which is
the Gaussian mechanism the coordinator's ledger accounts: the stated epsilon holds against the
coordinator itself, which sees only that noisy sum. A round with fewer than strategy.min_sites
updates is still charged before it is refused: its sum was unmasked.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import FitIns, FitRes, Parameters, ndarray_to_bytes
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from common.config import ExperimentConfig, SecAggConfig
from common.errors import ConfideError
from common.privacy.governance.central import central_plan
from common.privacy.mechanism.secagg import NAMES_KEY, NOISE_KEY, SITE_NAME_KEY, TENSORS_KEY
from server.recorder import _unwrapped

log = logging.getLogger(__name__)

MODULUS = 2**32  # Flower's default modulus: the masked sum of quantised values lives mod this


@dataclass(frozen=True)
class SecureAggregation:
    """How the coordinator runs a secure round (from ``secagg.*`` and the privacy plan)."""

    cfg: SecAggConfig
    min_sites: int
    timeout: float
    # Central DP: the noise standard deviation of the sum the sites must jointly reach (sigma*C).
    sum_noise_std: float = 0.0

    def protocol(self, sampled: int) -> tuple[int, int]:
        """(shares, threshold) Flower's workflow derives for ``sampled`` sites from the fractions
        (its setup stage, 1.42): each site secret-shares with ``shares`` sites, itself included,
        and any ``threshold`` of them rebuild its secrets; a stage with fewer than ``threshold``
        sites replying halts the round."""
        shares = round(self.cfg.shares * sampled)
        if shares < sampled and shares % 2 == 0:
            shares += 1
        if shares <= 2:
            shares = sampled
        return shares, max(round(self.cfg.threshold * shares), 2)

    def site_noise_std(self, sampled: int) -> float:
        """Each site's share of the central-DP noise: the sum of any t updates reaches sigma*C, t the
        fewest survivors Flower unmasks (its reconstruction threshold)."""
        if self.sum_noise_std <= 0:
            return 0.0
        return self.sum_noise_std / math.sqrt(self.protocol(sampled)[1])


def secure_aggregation(exp: ExperimentConfig) -> SecureAggregation | None:
    """The round runner's settings, or None when ``secagg.enabled`` is off."""
    if not exp.secagg.enabled:
        return None
    noise = 0.0
    if exp.privacy.mode == "central":
        plan = central_plan(exp)
        noise = plan.noise_multiplier * plan.clipping_norm
    return SecureAggregation(exp.secagg, exp.strategy.min_sites, exp.strategy.round_timeout, noise)


@dataclass
class SecureResult:
    """What a secure round gives the coordinator: the mean update, never a site's own."""

    mean_update: dict[str, np.ndarray]  # over the floating-point tensors
    sites: dict[str, dict[str, float]]  # each contributing site's scalar metrics (sent in the clear)
    masked_bytes: int  # bytes of one site's masked vector
    sampled: list[int]  # node ids the round was sent to
    contributed: list[int]  # node ids whose masked vectors are in the sum


class _Adapter(LegacyStrategy):
    """The legacy strategy the workflow calls: it hands out the prepared train instructions and
    keeps the unmasked aggregate. It never receives an individual update (the workflow sets every
    result's parameters to the unmasked aggregate before calling ``aggregate_fit``)."""

    def __init__(self, instructions: list[tuple[ClientProxy, FitIns]]) -> None:
        self.instructions = instructions
        self.results: list[tuple[ClientProxy, FitRes]] | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        return self.instructions

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Parameters | None, dict]:
        self.results = list(results)
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[float | None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict] | None:
        return None


class _Workflow(SecAggPlusWorkflow):
    """Flower's workflow, keeping the sites' errors it collects (it only logs that it halted)."""

    failures: list[BaseException] = []

    def _check_threshold(self, state: Any) -> bool:
        self.failures = list(state.failures)
        return super()._check_threshold(state)


def _error_text(failure: BaseException) -> str:
    error = failure.args[0] if failure.args else failure
    return str(getattr(error, "reason", error))


def floating(arrays: ArrayRecord) -> list[str]:
    """The tensors a secure round aggregates: the floating-point ones, in the record's order."""
    return [k for k, v in arrays.items() if np.issubdtype(np.dtype(v.dtype), np.floating)]


def run_secure_round(
    secure: SecureAggregation, grid: Grid, server_round: int, messages: list[Message], arrays: ArrayRecord
) -> SecureResult:
    """Run SecAgg+ over the train ``messages`` Confide's strategy made for this round."""
    names = floating(arrays)
    sampled = [m.metadata.dst_node_id for m in messages]
    if len(sampled) < 2:
        raise ConfideError(f"round {server_round}: secure aggregation needs at least 2 sites; {len(sampled)} sampled")
    if len(sampled) * secure.cfg.quantization_range >= MODULUS:
        raise ConfideError(
            f"secagg.quantization_range ({secure.cfg.quantization_range}) times the {len(sampled)} sampled sites "
            f"reaches the protocol's modulus 2^32; lower secagg.quantization_range"
        )
    shares, threshold = secure.protocol(len(sampled))
    noise = secure.site_noise_std(len(sampled))
    if noise > 0 and secure.cfg.clip_range < 4 * noise:
        raise ConfideError(
            f"secagg.clip_range ({secure.cfg.clip_range:g}) is below 4x each site's central-DP noise standard "
            f"deviation ({noise:.4g}): the quantiser would clip the noise; raise it to >= {4 * noise:.4g}"
        )
    run_id = grid.run.run_id if hasattr(grid, "run") else 0
    instructions = []
    for msg in messages:
        config = dict(msg.content["config"]) | {NAMES_KEY: names, NOISE_KEY: noise, TENSORS_KEY: list(arrays.keys())}
        params = arrayrecord_to_parameters(msg.content["arrays"], keep_input=True)
        instructions.append((GridClientProxy(msg.metadata.dst_node_id, grid, run_id), FitIns(params, config)))
    adapter = _Adapter(instructions)
    workflow = _Workflow(
        num_shares=float(secure.cfg.shares),
        reconstruction_threshold=float(secure.cfg.threshold),
        max_weight=1.0,
        clipping_range=secure.cfg.clip_range,
        quantization_range=secure.cfg.quantization_range,
        modulus_range=MODULUS,
        timeout=secure.timeout,
    )
    state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})})
    state[MAIN_PARAMS_RECORD] = ArrayRecord()
    context = LegacyContext(
        Context(run_id=run_id, node_id=0, node_config={}, state=state, run_config={}),
        strategy=adapter,
        client_manager=SimpleClientManager(),
    )
    log.info(
        "round %s: secure aggregation over %s sites (shares %s, threshold %s)",
        server_round,
        len(sampled),
        shares,
        threshold,
    )
    workflow(grid, context)
    if adapter.results is None:
        reasons = "; ".join(dict.fromkeys(_unwrapped(_error_text(f)) for f in workflow.failures))
        raise ConfideError(
            f"round {server_round}: secure aggregation halted: fewer than its threshold of {threshold} sites "
            "completed a stage" + (f" ({reasons})" if reasons else " (sites lost or too slow)")
        )
    aggregate = adapter.results[0][1].parameters
    mean = _as_named(aggregate, names, arrays)
    sites = {_site(fitres, proxy.node_id): _scalars(fitres.metrics) for proxy, fitres in adapter.results}
    return SecureResult(
        mean_update=mean,
        sites=sites,
        masked_bytes=_masked_bytes(arrays, names),
        sampled=sampled,
        contributed=[proxy.node_id for proxy, _ in adapter.results],
    )


def _masked_bytes(arrays: ArrayRecord, names: list[str]) -> int:
    """Bytes of one site's masked vector as Flower sends it: the weight factor (one element) and
    every aggregated tensor, as int64 ``.npy`` payloads (ndarray_to_bytes)."""
    shapes = [(1,)] + [tuple(arrays[k].shape) for k in names]
    return sum(len(ndarray_to_bytes(np.zeros(shape, np.int64))) for shape in shapes)


def _as_named(aggregate: Parameters, names: list[str], arrays: ArrayRecord) -> dict[str, np.ndarray]:
    from flwr.common import parameters_to_ndarrays

    values = parameters_to_ndarrays(aggregate)
    if len(values) != len(names):
        raise ConfideError(f"secure aggregation returned {len(values)} tensors for {len(names)} floating-point tensors")
    out = {}
    for name, value in zip(names, values, strict=True):
        if tuple(value.shape) != tuple(arrays[name].shape):
            raise ConfideError(f"secure aggregation returned tensor '{name}' with shape {value.shape}")
        out[name] = np.asarray(value, dtype=np.float64)
    return out


def _site(fitres: FitRes, node: int) -> str:
    return str(fitres.metrics.get(SITE_NAME_KEY, "") or f"node-{node}")


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k.replace("-", "_"): float(v)
        for k, v in metrics.items()
        if k != SITE_NAME_KEY and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def apply_mean(arrays: ArrayRecord, mean_update: dict[str, np.ndarray], factor: float = 1.0) -> ArrayRecord:
    """global + factor * mean update over the aggregated tensors, in the global model's dtypes;
    every other tensor (integer buffers) keeps the global model's value."""
    out = {}
    for k, v in arrays.items():
        current = v.numpy()
        value = current + factor * mean_update[k] if k in mean_update else current
        out[k] = Array(np.asarray(value, dtype=current.dtype))
    return ArrayRecord(out)


def aggregate_secure(strategy: Any, server_round: int, result: SecureResult, arrays: ArrayRecord) -> ArrayRecord | None:
    """The new global model from a secure round's mean update, through Confide's strategy: its
    records (each site's scalar metrics; the sites that dropped out), ``strategy.min_sites``, the
    strategy's server step and, under central DP, the coordinator's ledger. ``strategy`` is a
    ``ConfideStrategy`` or the ``CentralDP`` wrapper around one (server/strategy.py)."""
    from server.central_dp import CentralDP

    central = strategy if isinstance(strategy, CentralDP) else None
    base = central.base if central is not None else strategy
    recorder = base.recorder
    for name, metrics in sorted(result.sites.items()):
        recorder.site_trained(name, metrics, bytes_up=result.masked_bytes)
    names = {node: name for node, name in zip(result.contributed, result.sites, strict=True)}
    base.names.update(names)
    for node in sorted(set(result.sampled) - set(result.contributed)):
        recorder.site_failed(base.names.get(node, f"node-{node}"), "train", "dropped out of secure aggregation")
    recorder.train_finished()
    base.sent.pop("train", None)
    k, m = len(result.contributed), len(result.sampled)
    base.accepted_names = sorted(result.sites)
    if central is not None:  # the sum is unmasked: a release, charged whether or not it is used (the cap
        # was checked for the whole job before it started; a release that happened is never refused)
        central.ledger.commit(central.ledger.reserve(list(base.accepted_names), central.run_id, server_round))
        central.last = (k, m)
    if k < base.cfg.min_sites:
        raise ConfideError(
            f"round {server_round}: {k} update(s) in the secure sum, fewer than strategy.min_sites={base.cfg.min_sites}"
        )
    if central is None:
        return base.server_step(server_round, _template(arrays), apply_mean(arrays, result.mean_update))
    # Central DP: the sum of k clipped, noised updates over m, the sites the round was sent to (the
    # same release as server/central_dp.py; here the sites added the noise before masking).
    return base.server_step(server_round, _template(arrays), apply_mean(arrays, result.mean_update, factor=k / m))


def _template(arrays: ArrayRecord) -> Message:
    """A stand-in reply for the strategy's server step, which replaces its tensors by the aggregate."""
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"weight": 1.0})})
    return Message(content, dst_node_id=0, message_type="train")
