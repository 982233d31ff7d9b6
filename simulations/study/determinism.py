"""Reproducible simulated sites for studies: a ClientApp mod that seeds each message's randomness.

A sweep promises the same table for the same sweep file and seeds. Two things in a site are
random beyond the seeded data order and model init: torch's global RNG (dropout in BERT) and,
with DP-SGD, the Poisson sampling and Gaussian noise, which ``common.privacy`` deliberately
draws from the operating system's entropy (``secret_generator``) so that a coordinator who knows
the experiment seed cannot subtract the noise. In a simulation study the researcher plays every
party, so this mod seeds both for the duration of one message (``privacy.study_noise_seeds``)
from (experiment seed, site, round, message type, call number).

This voids the DP guarantee against anyone who knows the seed: use it only in simulated studies,
never in a deployment. The membership-inference audit does not use the seed, so the leakage it
measures is unaffected. A sweep turns it off with ``deterministic_sites: false``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from flwr.app import Context, Message


def seeded_sites(seed: int) -> Callable[[Message, Context, Callable[[Message, Context], Message]], Message]:
    """The mod for ``simulate(..., client_mods=[seeded_sites(exp.seed)])``."""

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        from common.privacy.mechanism import randomness

        config = msg.content.config_records.get("config")
        tag = "/".join(
            str(part)
            for part in (
                seed,
                context.node_config.get("partition-id", ""),
                config.get("server-round", 0) if config is not None else 0,
                msg.metadata.message_type,
            )
        )
        calls = itertools.count()

        torch.manual_seed(derive(f"{tag}/global"))
        with randomness.study_noise_seeds(lambda: derive(f"{tag}/{next(calls)}")):
            return call_next(msg, context)

    return mod


def derive(text: str) -> int:
    """A 63-bit seed from a string (stable across processes, unlike hash())."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
