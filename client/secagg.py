"""The site's side of SecAgg+ (``secagg.enabled``): Flower's ``secaggplus_mod`` around Confide's app.

Flower's mod runs the protocol's four stages on the site (keys, encrypted shares, masking,
unmasking) and, in the masking stage, calls the app and masks what it returns. It speaks the
legacy layout (``fitins.*`` in, ``fitres.*`` out, tensors numbered), and it assumes every training
message belongs to the protocol. ``secagg_mod`` therefore:
- passes every message that carries no SecAgg+ record straight on (plain jobs are untouched);
- inside Flower's mod, turns the legacy ``fitins`` layout into Confide's (``arrays`` by name,
  ``config``) for the app, and the app's reply into ``fitres``: the site's update (its weights
  minus the global model's, floating-point tensors only, plus its share of central-DP noise:
  common/privacy/mechanism/secagg.py), weight 1, and its scalar metrics with its name. Flower's mod masks
  the update and clears every tensor from the reply before it leaves.
It sits inside the audit-log mod (which records the masked vector that leaves) and outside the
central-DP clipping mod (the update is clipped before it is noised and masked).
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from client.update import update_of, weights_of
from common.errors import UpdateError
from common.privacy.mechanism.secagg import NAMES_KEY, NOISE_KEY, SITE_NAME_KEY, TENSORS_KEY, site_update

FITINS_ARRAYS, FITINS_CONFIG = "fitins.parameters", "fitins.config"
OWN_KEYS = (NAMES_KEY, NOISE_KEY, TENSORS_KEY)


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, _in_confide_layout(call_next))


def _in_confide_layout(call_next: ClientAppCallable) -> ClientAppCallable:
    def app(msg: Message, context: Context) -> Message:
        config = msg.content.config_records[FITINS_CONFIG]
        tensors = [str(n) for n in config.get(TENSORS_KEY, [])]
        numbered = msg.content.array_records[FITINS_ARRAYS]
        if len(tensors) != len(numbered):
            raise UpdateError(
                f"secure aggregation: the coordinator sent {len(numbered)} tensors and {len(tensors)} tensor names"
            )
        arrays = ArrayRecord({name: Array(numbered[str(i)].numpy()) for i, name in enumerate(tensors)})
        inner = ConfigRecord({k: v for k, v in config.items() if k not in OWN_KEYS})
        msg.content = RecordDict({"arrays": arrays, "config": inner})
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        return _as_fitres(reply, arrays, [str(n) for n in config.get(NAMES_KEY, [])], float(config.get(NOISE_KEY, 0.0)))

    return app


def _as_fitres(reply: Message, sent: ArrayRecord, names: list[str], noise_std: float) -> Message:
    """The app's reply in the legacy layout Flower's mod masks: the update as ``fitres.parameters``,
    weight 1 (every site counts the same), the scalar metrics and the site's name in
    ``fitres.metrics``."""
    update = update_of(weights_of(sent), reply)
    if update is None:
        raise UpdateError("secure aggregation: the site's reply carries no single set of weights to mask")
    masked = site_update(update.returned, update.received, names, noise_std)
    metrics: dict = {k: v for k, v in reply.content["metrics"].items() if not isinstance(v, list)}
    metrics[SITE_NAME_KEY] = str(reply.content["site"].get("name", ""))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(masked), 1, metrics)
    reply.content = fitres_to_recorddict(fitres, keep_input=False)
    return reply
