"""ClientApp mods Confide always installs.

``central_dp_clipping_mod``: with site-level (central) DP and client-side clipping, the server's
Flower wrapper (DifferentialPrivacyClientSide{Fixed,Adaptive}Clipping) only adds the noise; the
clipping of each site's update must happen at the site, in Flower's ``fixedclipping_mod`` or
``adaptiveclipping_mod``. Those mods reject messages without a clipping norm, so they cannot be
installed unconditionally; this mod hands a training message to the right one when the server's
train config asks for client-side clipping (``CLIENT_CLIPPING_KEY``), and passes every other
message through untouched.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from common.privacy.governance.central import CLIENT_CLIPPING_KEY


def central_dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    configs = list(msg.content.config_records.values()) if msg.metadata.message_type.startswith("train") else []
    kind = str(configs[0].get(CLIENT_CLIPPING_KEY, "")) if len(configs) == 1 else ""

    if kind == "fixed":
        return fixedclipping_mod(msg, context, call_next)
    if kind == "adaptive":
        return adaptiveclipping_mod(msg, context, call_next)
    return call_next(msg, context)
