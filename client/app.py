"""Flower ClientApp: one site. Receives global weights, trains or evaluates locally,
replies with weights and scalar metrics only (never records or per-sample values).

The site's privacy policy (common/privacy/governance/policy.py: its node config and policy file, never the
job) is read first, and every message's job is checked against it before any of the job's
settings is used: a job asking for less privacy than the policy is refused, naming the rule.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from client.audit_log import audit_log_mod
from client.compress_mod import compress_mod
from client.experiment import experiment_of
from client.faults import fault_mod
from client.mods import central_dp_clipping_mod
from client.public_errors import public_failure
from client.secagg import secagg_mod
from client.update import weights_of
from common import baseline
from common.config import ExperimentConfig
from common.data import LabelSet
from common.errors import ConfigError, PolicyRefused
from common.privacy.governance.policy import SitePolicy
from common.privacy.governance.policy import from_node_config as policy_from_node_config
from common.privacy.mechanism import randomness
from common.schema import SchemaPins
from common.site import SiteRuntime, SiteSpec, evaluate_round, load_global, released_state, site_runtime, train_round
from server import flower_runtime


def _setup(
    msg: Message, context: Context, fixed: ExperimentConfig | None
) -> tuple[ExperimentConfig, SiteRuntime, SitePolicy]:
    # The site's own log (progress lines, the full reason of a failure) and Flower's console in
    # this process, quiet as the driver's (its notices, and no second copy through Opacus's root handler).
    flower_runtime.setup_logging()
    spec = SiteSpec.from_node_config(context.node_config)
    if spec.deployed:  # a real site's DP noise comes from the OS's entropy, whatever else is loaded
        randomness.forbid_study_seeds()
    policy = policy_from_node_config(context.node_config, deployed=spec.deployed)
    exp = experiment_of(context, fixed)
    try:
        policy.check_job(exp.privacy, secure_aggregation=exp.secagg.enabled)
    except PolicyRefused as exc:  # the coordinator may not know this site's name yet: say it
        raise PolicyRefused(f"site '{spec.name}': {exc}") from None
    exp = _phase_experiment(exp, msg)
    labels = LabelSet(tuple(exp.data.labels) or tuple(msg.content["config"]["labels"]))
    SchemaPins.from_node_config(context.node_config).check(exp.data, labels.names, spec.name)  # before any read
    runtime = site_runtime(exp, spec, labels)
    weights = weights_of(msg.content["arrays"])
    load_global(exp, runtime, weights, run_id=_job(msg, context), policy=policy)
    return exp, runtime, policy


def _phase_experiment(exp: ExperimentConfig, msg: Message) -> ExperimentConfig:
    """What this message trains: the job's baseline (a linear layer, common/baseline.py) or its model
    (under local DP with a baseline, on the model's share of the budget)."""
    if _phase(msg) != baseline.PHASE:
        return baseline.model_experiment(exp)
    if baseline.features(exp) is None:
        raise ConfigError(f"the coordinator sent a baseline round but this job has none ({baseline.why_off(exp)})")
    side = msg.content["config"].get("image-size", 0)
    if isinstance(side, bool) or not isinstance(side, int) or side < 0:
        raise ConfigError("the coordinator sent an image size that is not a whole number; refused")
    return baseline.baseline_experiment(exp, side)


def _phase(msg: Message) -> str:
    return str(msg.content["config"].get("phase", "") or "")


def _reply(msg: Message, runtime: SiteRuntime, metrics: dict, arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": runtime.spec.name})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


def create_client_app(fixed: ExperimentConfig | None = None, mods: list[Mod] | None = None) -> ClientApp:
    """The ClientApp; ``fixed`` bypasses the run config (in-process simulations, tests);
    ``mods`` are Flower ClientApp mods wrapped around every message. The audit-log mod is
    outermost, so it records exactly what leaves the site (client/audit_log.py); inside it the
    central-DP clipping mod clips the update after any other mod has run."""
    client_app = ClientApp(
        mods=[
            audit_log_mod(fixed),
            secagg_mod,
            compress_mod(fixed),
            central_dp_clipping_mod,
            fault_mod(fixed),
            *(mods or []),
        ]
    )

    @client_app.train()
    @_no_data_in_errors
    def train(msg: Message, context: Context) -> Message:
        exp, rt, policy = _setup(msg, context, fixed)
        metrics = train_round(exp, rt, _round(msg), run_id=_job(msg, context), policy=policy, phase=_phase(msg))
        # Under strategy.personalize the site's head stays here: the update carries the body only.
        return _reply(msg, rt, metrics, ArrayRecord(released_state(exp, rt)))

    @client_app.evaluate()
    @_no_data_in_errors
    def evaluate(msg: Message, context: Context) -> Message:
        exp, rt, policy = _setup(msg, context, fixed)
        metrics = evaluate_round(exp, rt, _round(msg), run_id=_job(msg, context), policy=policy)
        return _reply(msg, rt, metrics)

    return client_app


def _no_data_in_errors(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """On a deployed site, any failure reaches Flower (and the coordinator) as a fixed code and the
    config keys it named, never its text (client/public_errors.py); simulated sites keep it."""

    @functools.wraps(handler)
    def run(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as exc:
            if not context.node_config.get("data-path"):
                raise
            site = str(context.node_config.get("site-name", "") or f"node-{context.node_id}")
            raise public_failure(exc, site) from None

    return run


def _job(msg: Message, context: Context) -> str:
    """The job this message belongs to: the Flower run that started it, which a resumed job keeps
    (server/run.py sends it), so the site's ledger entries for the job stay together. Only a
    number is accepted (in simulation it names the ledger's folder)."""
    job = str(msg.content["config"].get("job", "") or context.run_id)
    if not job.isdigit():
        raise ConfigError("the coordinator sent a job id that is not a run number; refused")
    return job


def _round(msg: Message) -> int:
    return int(msg.content["config"].get("server-round", 0))


app = create_client_app()
