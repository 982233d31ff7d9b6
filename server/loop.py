"""The round loop: Flower's ``Strategy.start`` with a first round other than 1.

Flower's own loop (flwr/serverapp/strategy/strategy.py, 1.42) always starts at round 1 and
evaluates the initial model as round 0; it has had no resume since 2021 (flower #599). This is
the same sequence, step for step, over the same strategy methods (configure_train,
send_and_receive, aggregate_train, configure_evaluate, aggregate_evaluate, then the server-side
evaluation), starting from any round: a fresh run starts at 1 after evaluating round 0, a resumed
one at the round after its checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.secagg import SecureAggregation, aggregate_secure, run_secure_round

log = logging.getLogger(__name__)


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    *,
    first_round: int,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None],
    secure: SecureAggregation | None = None,
) -> ArrayRecord:
    """Rounds ``first_round``..``num_rounds``; returns the final global arrays. With
    ``first_round`` 1 the initial model is evaluated as round 0 first, as Flower does. With
    ``secure``, training runs under SecAgg+ (server/secagg.py): the strategy gets only the sum."""
    if first_round == 1:
        evaluate_fn(0, arrays)
    # Tensors that stay with the sites (strategy.personalize: each site's own head): the strategy sends,
    # checks and aggregates the rest; the coordinator's copy is put back beside the aggregate.
    kept = getattr(strategy, "site_owned", frozenset())
    for server_round in range(first_round, num_rounds + 1):
        log.debug("[ROUND %s/%s]", server_round, num_rounds)
        shared = shared_part(arrays, kept)
        messages = strategy.configure_train(server_round, shared, train_config, grid)
        if secure is not None:
            result = run_secure_round(secure, grid, server_round, list(messages), shared)
            aggregated = aggregate_secure(strategy, server_round, result, shared)
        else:
            replies = grid.send_and_receive(messages=messages, timeout=timeout)
            aggregated, _ = strategy.aggregate_train(server_round, replies)
        if aggregated is not None:
            arrays = with_kept(aggregated, arrays, kept)
        replies = grid.send_and_receive(
            messages=strategy.configure_evaluate(server_round, shared_part(arrays, kept), evaluate_config, grid),
            timeout=timeout,
        )
        strategy.aggregate_evaluate(server_round, replies)
        evaluate_fn(server_round, arrays)
    return arrays


def shared_part(arrays: ArrayRecord, kept: frozenset[str]) -> ArrayRecord:
    """What the sites are sent: ``arrays`` without the ``kept`` tensors (all of it when none)."""
    if not kept:
        return arrays
    return ArrayRecord({k: v for k, v in arrays.items() if k not in kept})


def with_kept(aggregated: ArrayRecord, previous: ArrayRecord, kept: frozenset[str]) -> ArrayRecord:
    """The new global model: the aggregate, with the ``kept`` tensors as they were, in the model's order."""
    if not kept:
        return aggregated
    return ArrayRecord({k: previous[k] if k in kept else aggregated[k] for k in previous.keys()})
