"""Strategy construction by name, and the checks Confide adds around any Flower strategy.

``ConfideStrategy`` holds an instance of the Flower class that ``strategy.name`` selects
(server/strategies.py) and hands it every call, with Confide's checks around them: every update
is checked (tensor names, shapes, finite values) before aggregation and a malformed one is
excluded, naming the site and tensor; per-site metrics are kept beside the weighted means;
failures are recorded, including sites that never replied within ``strategy.round_timeout`` (a
lost site); a round with fewer valid updates than ``strategy.min_sites`` stops the run; the
aggregate keeps the global model's dtypes; and the Flower strategy's own state (server momentum,
Adam moments) can be saved and restored (through server/flower_internals.py).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from common import compress
from common.config import ROBUST, ExperimentConfig, StrategyConfig, TransportConfig
from common.errors import ConfideError, UpdateError
from common.metrics import summarize_sites
from common.update_stats import outliers, update_statistics
from common.weights import Weights, check_update, num_bytes
from server import flower_internals, norm_bound
from server.central_dp import CentralDP
from server.recorder import RoundRecorder
from server.strategies import CLASSES, describe, strategy_kwargs

log = logging.getLogger(__name__)

# Every reply carries the aggregation weight its site releases: its record count where the job and
# its policy allow releasing it (exactly or with accounted noise), else 1 (uniform). Central DP
# ignores it and weights every site equally (server/central_dp.py).
WEIGHT_KEY = "weight"
SITE_KEY = "site"
# How a site's own error starts (client/public_errors.py, client/app.py): "site 'NAME' ..." or
# "[policy-refused] site 'NAME': ...", inside Flower's wrapping of the exception.
ERROR_SITE = re.compile(r"site '([A-Za-z0-9_.@ -]{1,100})'")


def to_weights(record: ArrayRecord) -> Weights:
    return {k: v.numpy() for k, v in record.items()}


def site_name(msg: Message, known: dict[int, str], node: int | None = None) -> str:
    """The site's self-declared name; for an error reply, the name it used before (or node-<id>).

    ``node`` is the node the request went to: an error reply made by the SuperLink itself (node
    unavailable, message expired) carries the SuperLink's id as its source, not the site's.
    """
    node = msg.metadata.src_node_id if node is None else node
    if not msg.has_error() and SITE_KEY in msg.content.config_records:
        known[node] = str(msg.content.config_records[SITE_KEY].get("name", "")) or f"node-{node}"
    elif msg.has_error() and node not in known and msg.metadata.src_node_id != SUPERLINK_NODE_ID:
        # A site that fails before its first reply (a refusal in round 1) names itself in its error.
        named = ERROR_SITE.search(str(msg.error.reason))
        if named:
            known[node] = named.group(1)
    return known.get(node, f"node-{node}")


class ConfideStrategy(Strategy):
    """Confide's checks and records around a Flower strategy it holds (``flower``) and delegates to.

    A Flower ``Strategy`` itself, so the round loop (server/loop.py) and Flower's DP wrapper
    (server/central_dp.py) drive it like any other; Flower's own aggregation runs on ``flower``
    unchanged, over the updates that passed the checks.
    """

    def __init__(
        self,
        flower: FedAvg,
        cfg: StrategyConfig,
        reference: Weights,
        recorder: RoundRecorder,
        *,
        uniform: bool = False,
        buffers: frozenset[str] = frozenset(),
        transport: TransportConfig | None = None,
        clip_norm: float | None = None,
    ) -> None:
        # The checks read each reply's weight under WEIGHT_KEY; Flower must weigh by the same one.
        if flower.weighted_by_key != WEIGHT_KEY:
            raise ConfideError(
                f"the Flower strategy weighs replies by '{flower.weighted_by_key}', Confide's checks by '{WEIGHT_KEY}'"
            )
        self.flower = flower
        self.cfg = cfg
        self.uniform = uniform
        # Central DP clips every update to this norm before aggregating it (server/central_dp.py):
        # the update statistics are computed on the clipped updates too, never on what arrived.
        self.clip_norm = clip_norm
        self.accepted_names: list[str] = []
        # The global model's tensors that stay with the sites (strategy.personalize): never sent,
        # never aggregated; the loop keeps the coordinator's copy aside (server/loop.py).
        self.site_owned: frozenset[str] = frozenset()
        self.reference = {k: np.zeros(v.shape, v.dtype) for k, v in reference.items()}
        self.recorder = recorder
        self.names: dict[int, str] = {}
        # The messages sent in the current phase ("train"/"evaluate"); the grid sets their ids
        # when it pushes them, so a reply (or its absence) is matched to the node it went to.
        self.sent: dict[str, list[Message]] = {}
        self.global_arrays: Weights | None = None  # the model this round started from
        # Compressed updates (common/compress.py): replies are decoded against global_arrays; with
        # transport.broadcast the sites get the global model quantised, and the decoded broadcast
        # (``broadcast``) is the round's model on both sides.
        self.transport = transport or TransportConfig()
        self.broadcast: Weights | None = None
        self.dense = frozenset(set(buffers) & set(reference))  # statistics: never sparsified (top-k)
        integers = {k for k, v in reference.items() if not np.issubdtype(v.dtype, np.floating)}
        self.statistics = frozenset(integers | (set() if cfg.name in ROBUST else set(buffers) & set(reference)))
        self.not_weights = frozenset(integers | (set(buffers) & set(reference)))  # left out of update statistics

    def summary(self) -> None:
        """Flower's summary of the strategy it holds (its parameters)."""
        self.flower.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sent, arrays = self._quantised(arrays)
        if self.transport.topk > 0 and self.dense:  # the sites send these dense (client/compress_mod.py)
            config[compress.DENSE_KEY] = sorted(self.dense)
        self.recorder.begin(server_round, bytes_down=sent.count_bytes())
        self.global_arrays = {k: v.numpy() for k, v in arrays.items()}
        self.broadcast = self.global_arrays if sent is not arrays else None
        messages = list(self.flower.configure_train(server_round, arrays, config, grid))
        self.sent["train"] = _carrying(messages, sent, arrays)
        return self.sent["train"]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sent, arrays = self._quantised(arrays)
        messages = list(self.flower.configure_evaluate(server_round, arrays, config, grid))
        self.sent["evaluate"] = _carrying(messages, sent, arrays)
        return self.sent["evaluate"]

    def _quantised(self, arrays: ArrayRecord) -> tuple[ArrayRecord, ArrayRecord]:
        """(what the sites are sent, the model they decode from it): ``arrays`` twice unless
        transport.broadcast quantises the global model."""
        if not compress.compresses_broadcast(self.transport):
            return arrays, arrays
        encoded = compress.encode_weights({k: v.numpy() for k, v in arrays.items()}, self.transport)
        decoded = compress.decode_weights(encoded, self.transport, "the coordinator")
        return _record(encoded), _record(decoded)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.combine_train(server_round, self.accept_train(server_round, replies))

    def accept_train(
        self,
        server_round: int,
        replies: Iterable[Message],
        extra_check: Callable[[str, Weights], None] | None = None,
    ) -> list[Message]:
        """The valid updates of this round (failures recorded); stops the run below min_sites.
        ``extra_check(site, weights)`` may reject more (raising UpdateError)."""
        replies = list(replies)
        sent = self._destinations("train")
        valid: dict[str, tuple[Message, Weights]] = {}
        received: dict[str, int] = {}  # bytes of each valid update as it arrived (compressed or not)
        for msg in replies:
            name = site_name(msg, self.names, sent.get(msg.metadata.reply_to_message_id))
            if msg.has_error():
                self.recorder.site_failed(name, "train", _reason(msg))
                continue
            try:
                record = _only_array_record(msg, name)
                payload = to_weights(record)
                weights = self._decoded(payload, name)
                check_update(self.reference, weights, f"site '{name}'")
                _check_weight(msg, name)
                if extra_check is not None:
                    extra_check(name, weights)
            except UpdateError as exc:
                self.recorder.site_failed(name, "train", str(exc))
                continue
            if weights is not payload:  # the strategy aggregates the decoded weights
                msg.content[next(iter(msg.content.array_records))] = _record(weights)
            valid[name] = (msg, weights)
            received[name] = num_bytes(payload)
        accepted = self._screen(valid, received)
        self._record_silent("train", sent, replies)
        self.recorder.train_finished()
        if len(accepted) < self.cfg.min_sites:
            failures = "; ".join(f"{f['site']}: {f['reason']}" for f in self.recorder.current.failures)
            raise ConfideError(
                f"round {server_round}: {len(accepted)} valid update(s), fewer than "
                f"strategy.min_sites={self.cfg.min_sites}" + (f" ({failures})" if failures else "")
            )
        return accepted

    def _decoded(self, payload: Weights, name: str) -> Weights:
        """A site's weights: its payload itself, or, with compressed updates, the model this round
        started from plus the update the payload encodes (UpdateError if it is malformed)."""
        if not compress.active(self.transport):
            return payload
        if self.global_arrays is None:
            raise ConfideError("a compressed update arrived before any model was sent (configure_train)")
        return compress.decode_update(payload, self.global_arrays, self.transport, f"site '{name}'", self.dense)

    def _screen(self, valid: dict[str, tuple[Message, Weights]], received: dict[str, int]) -> list[Message]:
        """Record every valid update with its statistics (norm, norm over the round's median,
        cosine to the median update; of the clipped update under central DP); exclude those the norm
        and direction rules flag (strategy.reject_norm_ratio, min_cosine_to_median); with
        strategy.norm_bound, scale the others down to the round's median norm (the statistics are of
        the updates as they arrived)."""
        reference = self.global_arrays if self.global_arrays is not None else self.reference
        updates = {n: w for n, (_, w) in valid.items()}
        stats = update_statistics(reference, updates, skip=self.not_weights, clip_norm=self.clip_norm)
        rejected = outliers(stats, self.cfg.reject_norm_ratio, self.cfg.min_cosine_to_median)
        factors = self._bound_factors(stats)
        accepted: list[Message] = []
        self.accepted_names = []
        for name, (msg, weights) in valid.items():
            if name in rejected:
                self.recorder.site_failed(name, "train", rejected[name])
                continue
            metrics = {**_only_metrics(msg), **stats.get(name, {})}
            if name in factors:
                metrics["update_bound_factor"] = factors[name]
                if factors[name] < 1.0:
                    keys = [k for k in self.reference if k not in self.not_weights]
                    msg.content[next(iter(msg.content.array_records))] = _record(
                        norm_bound.bounded(reference, weights, factors[name], keys)
                    )
            self.recorder.site_trained(name, metrics, bytes_up=received[name])
            accepted.append(msg)
            self.accepted_names.append(name)
        return accepted

    def _bound_factors(self, stats: dict[str, dict[str, float]]) -> dict[str, float]:
        """strategy.norm_bound 'median': each site's factor min(1, median / its norm), the median being
        of this round's valid updates (server/norm_bound.py); empty when off."""
        if self.cfg.norm_bound == "off":
            return {}
        return norm_bound.bound_factors({n: s["update_norm"] for n, s in stats.items()})

    def combine_train(
        self, server_round: int, accepted: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The Flower strategy's aggregation over the accepted updates (equal weights when ``uniform``)."""
        self._weigh(accepted)
        aside = self._statistics_aside(accepted)
        arrays, metrics = self.flower.aggregate_train(server_round, accepted)
        return self._in_model_dtypes(arrays, aside), metrics

    def mean_train(self, server_round: int, accepted: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The plain (FedAvg) mean of the accepted updates, whatever the strategy: what central DP
        noises before the strategy's own server step (``server_step``)."""
        self._weigh(accepted)
        aside = self._statistics_aside(accepted)
        arrays, metrics = FedAvg.aggregate_train(self.flower, server_round, accepted)
        return self._in_model_dtypes(arrays, aside), metrics

    def server_step(self, server_round: int, template: Message, mean: ArrayRecord) -> ArrayRecord | None:
        """The strategy's server update applied to an already averaged model (``mean``): identity for
        FedAvg/FedProx, the momentum or adaptive step for server optimizers. ``template`` is any
        accepted reply; its weights are replaced by ``mean`` (post-processing of a DP release)."""
        name = next(iter(template.content.array_records))
        template.content[name] = mean
        next(iter(template.content.metric_records.values()))[WEIGHT_KEY] = 1.0
        aside = self._statistics_aside([template])
        arrays, _ = self.flower.aggregate_train(server_round, [template])
        return self._in_model_dtypes(arrays, aside)

    def server_state(self) -> dict[str, np.ndarray]:
        """The strategy's state beyond the global model (FedAvgM momentum; FedAdam/FedYogi/FedAdagrad
        moments), by tensor name, for the checkpoint. Empty for stateless strategies."""
        return flower_internals.optimizer_state(self.flower, self.reference)

    def load_server_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``server_state`` saved (a resumed run continues the same optimizer)."""
        groups: dict[str, dict[str, np.ndarray]] = {}
        for key, value in state.items():
            group, _, tensor = key.partition("/")
            groups.setdefault(group, {})[tensor] = np.asarray(value)
        for group, tensors in groups.items():
            if not flower_internals.keeps_state(self.flower, group):
                raise ConfideError(f"checkpoint holds '{group}' state that strategy '{self.cfg.name}' does not keep")
            check_update(self.reference, tensors, f"the checkpoint's '{group}' state")
        flower_internals.load_optimizer_state(self.flower, self.reference, groups)

    def _weigh(self, accepted: list[Message]) -> None:
        if self.uniform:
            for msg in accepted:
                next(iter(msg.content.metric_records.values()))[WEIGHT_KEY] = 1.0

    def _statistics_aside(self, accepted: list[Message]) -> dict[str, np.ndarray]:
        """Buffers are statistics, not weights: integer buffers (BatchNorm's step counter) always, and
        float buffers (running means and variances) unless the rule is a robust one, take the replies'
        weighted mean (integers rounded), whatever the strategy. The strategy is shown the global
        model's values for them, so optimizer moments, q-FFL's norms and server momentum see only
        weights (an Adam step would move a running variance by ~server_lr per round)."""
        keys = [k for k in self.reference if k in self.statistics]
        if not keys or not accepted:
            return {}
        metrics = [next(iter(m.content.metric_records.values())) for m in accepted]
        weights = np.array([float(m.get(WEIGHT_KEY, 1.0)) for m in metrics])
        records = [next(iter(m.content.array_records.values())) for m in accepted]
        means = {}
        for k in keys:
            mean = np.tensordot(weights / weights.sum(), np.stack([r[k].numpy() for r in records]), axes=1)
            integer = np.issubdtype(self.reference[k].dtype, np.integer)
            means[k] = np.asarray(np.rint(mean) if integer else mean, self.reference[k].dtype)
        shown = {k: np.asarray((self.global_arrays or means)[k], dtype=np.float64) for k in keys}
        for msg, record in zip(accepted, records, strict=True):
            name = next(iter(msg.content.array_records))
            msg.content[name] = ArrayRecord({k: Array(shown[k]) if k in shown else v for k, v in record.items()})
        return means

    def _in_model_dtypes(self, arrays: ArrayRecord | None, integers: dict[str, np.ndarray]) -> ArrayRecord | None:
        """The aggregate in the global model's dtypes, with the statistics set aside before."""
        if arrays is None:
            return None
        out = {}
        for k, v in arrays.items():
            value = integers[k] if k in integers else v.numpy().astype(self.reference[k].dtype, copy=False)
            out[k] = Array(np.asarray(value))
        return ArrayRecord(out)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        sent = self._destinations("evaluate")
        ok: list[Message] = []
        for msg in replies:
            name = site_name(msg, self.names, sent.get(msg.metadata.reply_to_message_id))
            if msg.has_error():
                self.recorder.site_failed(name, "evaluate", _reason(msg))
                continue
            self.recorder.site_evaluated(name, _only_metrics(msg))
            ok.append(msg)
        self._record_silent("evaluate", sent, replies)
        return self.flower.aggregate_evaluate(server_round, ok)

    def _destinations(self, phase: str) -> dict[str, int]:
        """Message id -> destination node of what this phase sent (empty if nothing was pushed)."""
        messages = self.sent.pop(phase, [])
        return {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}

    def _record_silent(self, phase: str, sent: dict[str, int], replies: list[Message]) -> None:
        """A site that got a message but never answered within the round timeout is a failure too."""
        answered = {msg.metadata.reply_to_message_id for msg in replies}
        for message_id, node in sent.items():
            if message_id not in answered:
                reason = f"no reply within strategy.round_timeout={self.cfg.round_timeout:g}s (site lost or too slow)"
                self.recorder.site_failed(self.names.get(node, f"node-{node}"), phase, reason)


def sites_release_evaluation(exp: ExperimentConfig) -> bool:
    """Whether the sites may release what held-out evaluation measures (no DP, or DP with
    privacy.site_metrics noisy/exact)."""
    return exp.privacy.mode == "off" or exp.privacy.site_metrics != "withhold"


def flower_strategy(exp: ExperimentConfig) -> FedAvg:
    """The Flower strategy ``strategy.name`` selects, as Confide configures it: sampling and
    minimums from the typed config, replies weighed by their released ``weight``, evaluation
    metrics summarized per site, and the family's own parameters (server/strategies.py). Sites
    evaluate only where they may release what evaluation measures."""
    cfg = exp.strategy
    fraction_evaluate = cfg.fraction_evaluate if sites_release_evaluation(exp) else 0.0
    return CLASSES[cfg.name](
        fraction_train=cfg.fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=cfg.min_sites,
        min_evaluate_nodes=cfg.min_sites if fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.min_sites,
        weighted_by_key=WEIGHT_KEY,
        evaluate_metrics_aggr_fn=_aggregate_site_metrics,
        **strategy_kwargs(exp),
    )


def build_strategy(
    exp: ExperimentConfig,
    reference: Weights,
    recorder: RoundRecorder,
    run_id: str = "",
    buffers: frozenset[str] = frozenset(),
) -> Strategy:
    """The Flower strategy ``strategy.name`` selects, held by Confide's checks; with privacy.mode
    'central', wrapped in Confide's accounted central-DP wrapper (server/central_dp.py).
    ``buffers``: the exchanged tensors that are statistics (BatchNorm running stats), not weights."""
    cfg = exp.strategy
    p = exp.privacy
    norm_bound.check(exp)
    # strategy.personalize 'head': the sites send their body only, so the body is all the strategy
    # checks and aggregates; the coordinator's copy of the head is never sent (server/loop.py).
    site_owned = frozenset()
    if cfg.personalize == "head":
        from common.personalize import check_split, head_keys

        check_split(list(reference), exp.model.name)
        site_owned = head_keys(reference)
        reference = {k: v for k, v in reference.items() if k not in site_owned}
    central = p.mode == "central"
    base = ConfideStrategy(flower_strategy(exp), cfg, reference, recorder, uniform=central, buffers=buffers,
                           transport=exp.transport, clip_norm=p.clipping_norm if central else None)  # fmt: skip
    base.site_owned = site_owned
    log.info("strategy: %s", describe(exp))
    if p.mode != "central":
        return base
    return CentralDP(base, exp, run_id)


def _aggregate_site_metrics(records: list[Any], weight_key: str) -> MetricRecord:
    per_site = {
        str(i): {k: float(v) for k, v in next(iter(r.metric_records.values())).items()} for i, r in enumerate(records)
    }
    return MetricRecord(summarize_sites(per_site, weight_key=weight_key))


def _record(weights: Weights) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()})


def _carrying(messages: list[Message], sent: ArrayRecord, model: ArrayRecord) -> list[Message]:
    """``messages`` (built around ``model``) carrying ``sent`` instead, where that is another record
    (the quantised broadcast); as they are otherwise."""
    if sent is model:
        return messages
    for msg in messages:
        for key in list(msg.content.array_records):
            msg.content[key] = sent
    return messages


def _only_array_record(msg: Message, name: str) -> ArrayRecord:
    records = list(msg.content.array_records.values())
    if len(records) != 1:
        raise UpdateError(f"update from site '{name}' carries {len(records)} weight records, expected 1")
    return records[0]


def _check_weight(msg: Message, name: str) -> None:
    records = list(msg.content.metric_records.values())
    weight = records[0].get(WEIGHT_KEY) if len(records) == 1 else None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise UpdateError(f"update from site '{name}' has no positive finite '{WEIGHT_KEY}' metric")


def _only_metrics(msg: Message) -> dict[str, float]:
    records = list(msg.content.metric_records.values())
    if len(records) != 1:
        return {}
    return {k.replace("-", "_"): float(v) for k, v in records[0].items() if not isinstance(v, list)}


def _reason(msg: Message) -> str:
    reason = str(msg.error.reason).strip()
    lines = [ln for ln in reason.splitlines() if ln.strip()]
    # Flower forwards the ClientApp's exception; keep its last line (the message itself).
    return lines[-1] if lines else f"error code {msg.error.code}"
