"""Failure injection for simulations: a ClientApp mod that makes simulated sites fail as real ones
do, from the experiment's ``faults`` section (common/config/faults.py: FaultConfig).

Per message, for the site with partition id p in round r (decisions seeded by the experiment's
seed, p and r, so a rerun injects the same faults): a delay of up to ``straggler_delay`` seconds;
a dropout with probability ``dropout`` (the reply is an error); a crash of ``crash_site`` from
``crash_round`` on; a corrupted update from ``corrupt_site`` (NaN, scaled or sign-flipped around the
global model, or one of the adaptive attacks of client/attacks.py, from ``corrupt_count`` colluding
sites). Mislabelled data (``label_flip_site``) is applied where the site reads its records
(common/site.py). What was injected is in the run's metrics: an error's reason starts with
"injected", and every training reply carries the metric ``fault_injected`` (1 for a corrupted
update, else 0). A site with its own
data file (a deployment) refuses to inject anything.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from client.attacks import attack, attack_cosine, attack_scale, bias_direction, corrupting
from client.experiment import experiment_of
from client.update import Update, received, replace, update_of
from common.config import ExperimentConfig
from common.errors import ConfigError
from common.weights import Weights

INJECTED = "injected"


class InjectedFault(RuntimeError):
    """A failure the experiment's ``faults`` section asked for."""


def fault_mod(fixed: ExperimentConfig | None) -> Mod:
    """The mod the ClientApp always installs; it does nothing unless the experiment (``fixed``, or
    the one the run config names) has an active ``faults`` section."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        exp = experiment_of(context, fixed)
        cfg = exp.faults
        if not cfg.active:
            return call_next(msg, context)
        if context.node_config.get("data-path"):
            raise ConfigError("config section 'faults' is for simulations; a deployed site does not inject faults")
        site = int(context.node_config.get("partition-id", -1))
        _check_colluders(exp)
        name = str(context.node_config.get("site-name", "") or f"site-{site}")  # the coordinator may not know it yet
        rnd = int(msg.content["config"].get("server-round", 0)) if "config" in msg.content else 0
        phase = msg.metadata.message_type.split(".")[0]
        rng = np.random.default_rng([exp.seed, site, rnd, phase == "train"])
        if cfg.straggler_delay:
            time.sleep(float(rng.uniform(0, cfg.straggler_delay)))
        if site == cfg.crash_site and rnd >= cfg.crash_round:
            raise InjectedFault(f"{INJECTED} crash of site '{name}' from round {cfg.crash_round} (faults.crash_site)")
        if cfg.dropout and rng.random() < cfg.dropout:
            raise InjectedFault(f"{INJECTED} dropout of site '{name}' in round {rnd} (faults.dropout={cfg.dropout:g})")
        start = received(msg) if phase == "train" else {}
        reply = call_next(msg, context)
        update = update_of(start, reply) if phase == "train" else None
        if update is not None:
            corrupt = corrupting(exp, site)
            if corrupt:
                replace(reply, update, _corrupt(update, exp))
            # every training reply carries it (Flower aggregates only metric records with equal keys)
            reply.content["metrics"]["fault_injected"] = float(corrupt)
        return reply

    return mod


def _check_colluders(exp: ExperimentConfig) -> None:
    last = exp.faults.corrupt_site + exp.faults.corrupt_count - 1
    if exp.faults.corrupt_site >= 0 and last >= exp.data.num_sites:
        raise ConfigError(
            f"config key 'faults.corrupt_count' ({exp.faults.corrupt_count}) reaches site {last} from "
            f"faults.corrupt_site={exp.faults.corrupt_site}, beyond data.num_sites={exp.data.num_sites}"
        )


def _corrupt(update: Update, exp: ExperimentConfig) -> Weights:
    kind = exp.faults.corrupt
    direction = bias_direction(update.received, exp.seed) if kind == "bias" else None
    return attack(kind, update.received, update.returned, attack_scale(exp), direction, attack_cosine(exp))
