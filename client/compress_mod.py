"""The site's side of compressed updates (the ``transport`` config section, common/compress.py).

``compress_mod(fixed)`` is a ClientApp mod that sits inside the audit-log mod (which records the
compressed bytes that actually leave) and outside the central-DP clipping mod (so it compresses
the update after clipping and after any DP noise: post-processing, epsilon unchanged). Per message:
- an incoming model the coordinator quantised (``transport.broadcast``) is decoded before the
  app (and the clipping mod) sees it, so the site trains from, and its update is measured
  against, exactly what the coordinator decodes too;
- a training reply's weights become the encoded update (its weights minus the model received).
  With top-k, what the payload leaves out is the site's residual, kept in the ClientApp
  ``Context.state`` (per node and run) and added to the next round's update (error feedback).
  With client-side clipping the decoded update stays within the clipping norm.
It does nothing when the experiment's transport is the default (float32, dense).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client.experiment import experiment_of
from client.update import received, record_of, replace, update_of, weights_of
from common import compress
from common.config import ExperimentConfig, TransportConfig
from common.errors import ConfigError
from common.privacy.governance.central import CLIENT_CLIPPING_KEY
from common.weights import Weights

RESIDUAL_KEY = "transport.residual"  # the site's error-feedback residual in Context.state


def compress_mod(fixed: ExperimentConfig | None = None) -> Mod:
    """The mod the ClientApp always installs; it passes every message through unless the
    experiment (``fixed``, or the one the run config names) compresses updates."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        exp = experiment_of(context, fixed)
        t = exp.transport
        if not compress.active(t):
            return call_next(msg, context)
        if exp.secagg.enabled:
            raise ConfigError(
                "transport compression cannot be combined with secagg.enabled (masking needs the dense update)"
            )
        if compress.compresses_broadcast(t):
            _decode_broadcast(msg, t)
        if not msg.metadata.message_type.startswith("train"):
            return call_next(msg, context)
        start = received(msg)
        reply = call_next(msg, context)
        update = update_of(start, reply)
        if update is None:
            return reply
        config = _config(msg)
        dense = frozenset(str(k) for k in config.get(compress.DENSE_KEY, []))
        # One residual per phase: the baseline's layer and the model have different tensors.
        state_key = RESIDUAL_KEY + (f".{config['phase']}" if config.get("phase") else "")
        payload, residual = compress.encode_update(
            update.returned, update.received, t, _residual(context, state_key), _clipping_norm(config), dense
        )
        if t.topk > 0:
            context.state[state_key] = record_of(residual)
        return replace(reply, update, payload)

    return mod


def _decode_broadcast(msg: Message, t: TransportConfig) -> None:
    for key, record in list(msg.content.array_records.items()):
        msg.content[key] = record_of(compress.decode_weights(weights_of(record), t, "the server"))


def _residual(context: Context, key: str) -> Weights | None:
    record = context.state.array_records.get(key)
    return None if record is None else weights_of(record)


def _config(msg: Message) -> dict:
    configs = list(msg.content.config_records.values())
    return dict(configs[0]) if len(configs) == 1 else {}


def _clipping_norm(config: dict) -> float | None:
    """The clipping norm the coordinator asked this site to clip its update to (client-side
    clipping under central DP), else None."""
    if not config.get(CLIENT_CLIPPING_KEY) or KEY_CLIPPING_NORM not in config:
        return None
    return float(config[KEY_CLIPPING_NORM])  # type: ignore[arg-type]
