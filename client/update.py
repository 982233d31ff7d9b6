"""A site's update as the ClientApp mods see it.

Every mod that acts on what a site sends back after training (fault injection, compression, the
SecAgg+ update) reads the same pair: the global model the site received, taken from the training
message before the app runs (an inner mod may rewrite the message), and the weights of the app's
reply; their difference is the update. ``Update`` holds the pair. ``received`` and ``update_of``
read it out of Flower's messages and ``replace`` writes a mod's result back, so the conversion
between Flower's ``ArrayRecord`` and numpy weights lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Array, ArrayRecord, Message

from common.errors import ConfigError
from common.weights import Weights


@dataclass(frozen=True)
class Update:
    received: Weights  # the global model this round started from
    returned: Weights  # the weights the app's reply carries
    key: str  # the reply's array record that holds them


def weights_of(record: ArrayRecord) -> Weights:
    return {k: v.numpy() for k, v in record.items()}


def record_of(weights: Weights) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in weights.items()})


def received(msg: Message) -> Weights:
    """The global model a training message carries (its one array record)."""
    records = list(msg.content.array_records.values())
    if len(records) != 1:
        raise ConfigError(f"a training message carries {len(records)} weight records; a site's update needs 1")
    return weights_of(records[0])


def update_of(received: Weights, reply: Message) -> Update | None:
    """The update in the app's reply to a training message whose model was ``received``; None for
    an error reply or one without exactly one array record (nothing to act on)."""
    if reply.has_error() or len(reply.content.array_records) != 1:
        return None
    key, record = next(iter(reply.content.array_records.items()))
    return Update(received, weights_of(record), key)


def replace(reply: Message, update: Update, weights: Weights) -> Message:
    """The reply with ``weights`` in place of the update's returned weights."""
    reply.content[update.key] = record_of(weights)
    return reply
