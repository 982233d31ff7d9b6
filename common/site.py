"""One site's view of an experiment: who it is, its data, its model (cached per process).

A site is described by its node config. In simulation it is a partition of a shared
dataset (``partition-id``/``num-partitions``, set by Flower); in deployment it brings
its own file (``data-path``). Either way the result is a ``SiteRuntime`` holding the
model and the site's train and held-out sets, built once per process and reused for
every round (Flower builds a new ClientApp object for every message).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from common.augment import augmenter
from common.batches import make_dataset, make_loader
from common.config import BUILTIN_SOURCES, TEXT_SOURCES, DataConfig, DataSource, ExperimentConfig, resolve_path
from common.data import LabelSet, read_train
from common.device import place
from common.errors import ConfigError, DataError
from common.models import build_model
from common.partition import partition_of, train_val_split
from common.privacy.governance.ledger_home import simulated_ledger, state_dir
from common.privacy.governance.policy import NODE_KEYS as POLICY_KEYS
from common.privacy.governance.policy import POLICY_FILE_KEY, SIMULATION, SitePolicy
from common.privacy.governance.site_privacy import SitePrivacy
from common.schema import PIN_KEYS
from common.train import TrainResult, evaluate, head_only, is_head, train
from common.weights import Weights, check_update, exchanged_state, set_weights

log = logging.getLogger(__name__)

# File formats a site may name in its node config ('data-format'): the non-built-in sources.
FILE_FORMATS = tuple(f for f in typing.get_args(DataSource) if f not in BUILTIN_SOURCES)


@dataclass(frozen=True)
class SiteSpec:
    """Identity and data location of one site, from its node config."""

    name: str
    partition_id: int | None = None
    num_partitions: int | None = None
    data_path: str = ""
    # The file format of the site's own data ('npz', 'csv', ...); "" = the experiment's data.source.
    data_format: str = ""

    @property
    def deployed(self) -> bool:
        """A site with its own data (deployment), as opposed to a simulated partition."""
        return bool(self.data_path)

    @staticmethod
    def from_node_config(node_config: Mapping[str, Any]) -> SiteSpec:
        _check_keys(node_config)
        pid = _opt_int(node_config, "partition-id")
        nparts = _opt_int(node_config, "num-partitions")
        data_path = str(node_config.get("data-path", "") or "")
        data_format = str(node_config.get("data-format", "") or "")
        if not data_path and pid is None:
            raise ConfigError("node config needs 'data-path' (a site's own data) or 'partition-id' (simulation)")
        if data_format and (not data_path or data_format not in FILE_FORMATS):
            raise ConfigError(
                f"node config 'data-format'={data_format!r} needs a 'data-path' and one of {', '.join(FILE_FORMATS)}"
            )
        if pid is not None and (nparts is None or not 0 <= pid < nparts):
            raise ConfigError(f"node config 'partition-id'={pid} is outside 'num-partitions'={nparts}")
        return SiteSpec(
            name=_site_name(node_config, deployed=bool(data_path)),
            partition_id=pid,
            num_partitions=nparts,
            data_path=data_path,
            data_format=data_format,
        )


@dataclass
class SiteRuntime:
    spec: SiteSpec
    model: nn.Module
    train_set: Dataset
    val_set: Dataset
    labels: LabelSet


# Per process (a simulation's Ray worker serves many sites): the last few sites' data, and one model
# per experiment shared by them (every message loads the global weights into it before use), so
# memory is bounded whatever the number of sites a process serves.
_CACHE: OrderedDict[tuple, SiteRuntime] = OrderedDict()
_CACHE_SIZE = 8
_MODELS: OrderedDict[tuple, nn.Module] = OrderedDict()
_MODELS_SIZE = 2
# Each model's head as built (seeded, the same at every site): a personalised site's head before its
# first round, since the shared model may hold another site's head by then.
_INITIAL_HEADS: dict[int, dict[str, torch.Tensor]] = {}


def clear_caches() -> None:
    """Forget every site runtime, model and initial head this process has built."""
    _CACHE.clear()
    _MODELS.clear()
    _INITIAL_HEADS.clear()


def site_runtime(exp: ExperimentConfig, spec: SiteSpec, labels: LabelSet) -> SiteRuntime:
    """The site's data for this experiment, built once per process (an LRU of ``_CACHE_SIZE``
    sites), with the process's model for the experiment (callers load weights into it first)."""
    key = (exp, spec, labels)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if exp.train.threads:
        torch.set_num_threads(exp.train.threads)
    train_raw, val_raw = site_records(exp, spec, labels)
    runtime = SiteRuntime(
        spec=spec,
        model=_model(exp, labels),
        train_set=make_dataset(train_raw, exp.model),
        val_set=make_dataset(val_raw, exp.model),
        labels=labels,
    )
    log.info("site %s: %d training and %d held-out records", spec.name, len(train_raw), len(val_raw))
    if exp.privacy.local:  # report before the first DP round what DP-SGD will do with this model
        from common.privacy.mechanism.model_surgery import readiness

        head_rounds = min(exp.train.head_only_rounds, exp.strategy.rounds)
        if head_rounds:  # what those rounds train: the head alone
            with head_only(runtime.model):
                head = readiness(runtime.model, exp.privacy, exp.train.batch_size).summary()
            log.info("site %s: rounds 1-%d (head only): %s", spec.name, head_rounds, head)
        if head_rounds < exp.strategy.rounds:
            full = readiness(runtime.model, exp.privacy, exp.train.batch_size).summary()
            log.info("site %s: %s%s", spec.name, f"rounds {head_rounds + 1}+: " if head_rounds else "", full)

    _CACHE[key] = runtime
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return runtime


def _model(exp: ExperimentConfig, labels: LabelSet) -> nn.Module:
    """One model per experiment and process, shared by the sites it serves in turn."""
    key = (exp, labels)
    if key not in _MODELS:
        model = place(build_model(exp, len(labels)), exp.train)
        _MODELS[key] = model
        _INITIAL_HEADS[id(model)] = {k: v.detach().clone() for k, v in model.state_dict().items() if is_head(k)}
        while len(_MODELS) > _MODELS_SIZE:
            _INITIAL_HEADS.pop(id(_MODELS.popitem(last=False)[1]), None)
    _MODELS.move_to_end(key)
    return _MODELS[key]


def site_records(exp: ExperimentConfig, spec: SiteSpec, labels: LabelSet):  # -> (RawData, RawData)
    """The site's (train, held-out) records."""
    if spec.data_path:
        records, dropped = read_train(_site_data_config(exp, spec), spec.data_path).within(labels)
        if dropped:  # the site's own log only: nothing of it is sent
            log.warning(
                "site %s: %d record(s) of %s carry a label outside the job's label set and were left out",
                spec.name, dropped, spec.data_path,
            )  # fmt: skip
        raw = records.with_labels(labels, where=spec.data_path)
        split_seed = exp.seed
    else:
        assert spec.partition_id is not None and spec.num_partitions is not None
        if spec.num_partitions != exp.data.num_sites:
            raise ConfigError(
                f"this simulation has {spec.num_partitions} sites but config key 'data.num_sites' "
                f"is {exp.data.num_sites}; run with --federation-config "
                f'"num-supernodes={exp.data.num_sites}" or set data.num_sites'
            )
        where = exp.data.path or f"built-in '{exp.data.source}'"
        everything = read_train(exp.data).with_labels(labels, where=where)
        mine = partition_of(everything.labels, exp.data, exp.seed, spec.partition_id)  # this site's only
        if len(mine) == 0:
            raise DataError(
                f"site '{spec.name}': its partition of {where} is empty "
                "(fewer records than sites, or a very small data.alpha)"
            )
        raw = everything.subset(mine)
        if spec.partition_id == exp.faults.label_flip_site:  # injected fault: a mislabelled site
            raw = dataclasses.replace(raw, labels=(raw.labels + 1) % len(labels))
            log.warning("site %s: every label shifted by one class (faults.label_flip_site)", spec.name)
        split_seed = exp.seed + spec.partition_id
    train_idx, val_idx = train_val_split(len(raw), exp.data.val_fraction, split_seed, spec.name)
    return raw.subset(train_idx), raw.subset(val_idx)


def _site_data_config(exp: ExperimentConfig, spec: SiteSpec) -> DataConfig:
    """The experiment's data settings, with the site's own file format when its node config names one."""
    if not spec.data_format or spec.data_format == exp.data.source:
        return exp.data
    if (spec.data_format in TEXT_SOURCES) != exp.data.is_text:
        kind = "text" if exp.data.is_text else "image"
        raise ConfigError(
            f"site '{spec.name}': node config 'data-format'={spec.data_format!r} is not {kind} data, "
            f"which this experiment (data.source '{exp.data.source}') needs"
        )
    return dataclasses.replace(exp.data, source=spec.data_format, path=spec.data_path)


# What a node config may hold: Flower's simulation keys, the site's identity and data, its privacy
# policy (common/privacy/governance/policy.py) and its schema pins (common/schema.py). Anything else is a typo
# that would otherwise be ignored (a misspelt policy key leaves the default in force unnoticed).
SITE_KEYS = ("partition-id", "num-partitions", "data-path", "site-name", "data-format")
NODE_CONFIG_KEYS = (*SITE_KEYS, POLICY_FILE_KEY, *POLICY_KEYS, *PIN_KEYS)


def _check_keys(node_config: Mapping[str, Any]) -> None:
    unknown = sorted(str(k) for k in node_config if k not in NODE_CONFIG_KEYS)
    if unknown:
        close = difflib.get_close_matches(unknown[0].replace("_", "-"), NODE_CONFIG_KEYS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(NODE_CONFIG_KEYS)}"
        raise ConfigError(f"unknown node config key '{unknown[0]}'; {hint}")


def _site_name(node_config: Mapping[str, Any], deployed: bool) -> str:
    """The site's name: it labels its metrics and model cards and names its ledger file, so a
    deployed site must give one, and it must be one plain part (no path, no control character)."""
    if "site-name" not in node_config:
        if deployed:
            raise ConfigError(
                "node config 'site-name' is missing: a site with its own 'data-path' needs a name "
                "(its metrics, model cards and privacy ledger carry it)"
            )
        return f"site-{node_config.get('partition-id')}"
    value = node_config["site-name"]
    name = str(value)
    bad = (
        isinstance(value, bool)
        or not isinstance(value, (str, int))
        or not name.strip()
        or name != name.strip()
        or name in (".", "..")
        or any(c in name for c in "/\\")
        or any(not c.isprintable() for c in name)
    )
    if bad:
        raise ConfigError(
            f"node config 'site-name' must be a plain name (no path separator, no leading or trailing space, "
            f"not '.' or '..'); got {value!r}"
        )
    return name


def _opt_int(cfg: Mapping[str, Any], key: str) -> int | None:
    if key not in cfg or cfg[key] == "":
        return None
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
        raise ConfigError(f"node config '{key}' must be an integer; got {value!r}")
    return int(value)


def ledger_path(exp: ExperimentConfig, spec: SiteSpec, policy: SitePolicy) -> Path:
    """The site's privacy ledger, which follows the site and its data, never the run: its policy's
    ledger folder, else one per data set under the Confide state folder (common/privacy/governance/ledger_home.py).
    A deployed site never takes the folder from the job (``privacy.ledger_dir`` is simulation-only)."""
    if policy.ledger_dir:
        return resolve_path(policy.ledger_dir) / f"{_safe(spec.name)}.json"
    if spec.deployed:
        return simulated_ledger(exp, spec.name, spec.data_path, root=state_dir() / "ledgers")
    return simulated_ledger(exp, spec.name)


def load_global(
    exp: ExperimentConfig, rt: SiteRuntime, weights: Weights, run_id: str, policy: SitePolicy = SIMULATION
) -> None:
    """The coordinator's model into the site's model. Under ``strategy.personalize: head`` the
    coordinator sends the body only: the head is the site's own from its state folder (saved by its
    last round of this job), or the model's initial head before the site's first round."""
    if exp.strategy.personalize == "off":
        set_weights(rt.model, weights, source="the server")
        return
    from common import personalize

    own = {k: v.detach().cpu().numpy() for k, v in exchanged_state(rt.model).items()}
    personalize.check_split(list(own), exp.model.name)
    check_update(personalize.body_of(own), weights, "the server")
    state = {k: torch.as_tensor(v).to(rt.model.state_dict()[k].dtype) for k, v in weights.items()}
    rt.model.load_state_dict(state, strict=False)
    if not personalize.restore_head(rt.model, personal_head(exp, rt, policy, run_id)):
        rt.model.load_state_dict(_INITIAL_HEADS[id(rt.model)], strict=False)


def released_state(exp: ExperimentConfig, rt: SiteRuntime) -> dict[str, torch.Tensor]:
    """The tensors the site's update carries: the exchanged ones, without the head when personalised."""
    state = exchanged_state(rt.model)
    if exp.strategy.personalize == "off":
        return state
    from common.personalize import body_of

    return body_of(state)


def personal_head(exp: ExperimentConfig, rt: SiteRuntime, policy: SitePolicy, run_id: str) -> Path:
    from common.personalize import head_path

    return head_path(ledger_path(exp, rt.spec, policy), run_id)


def train_round(
    exp: ExperimentConfig,
    rt: SiteRuntime,
    server_round: int,
    run_id: str,
    policy: SitePolicy = SIMULATION,
    phase: str = "",
) -> dict[str, float]:
    """One round of local training (DP-SGD when privacy is local); returns scalar metrics only,
    those the job asks for and the site's policy allows (common/privacy/governance/release.py). The first
    ``train.head_only_rounds`` rounds train the classification head alone (LP-FT). ``phase``: the
    job's part this round belongs to ("" the model, "baseline" its baseline), tagged on its ledger entries."""
    with head_only(rt.model, server_round <= exp.train.head_only_rounds):
        metrics = _train_round(exp, rt, server_round, run_id, policy, phase)
    if exp.strategy.personalize != "off":  # kept for the site's next round (and a resumed job)
        from common.personalize import save_head

        save_head(rt.model, personal_head(exp, rt, policy, run_id))
    return metrics


def _train_round(
    exp: ExperimentConfig, rt: SiteRuntime, server_round: int, run_id: str, policy: SitePolicy, phase: str
) -> dict[str, float]:
    augment = augmenter(exp.train, seed=(exp.seed * 1000 + server_round) * 1000 + (rt.spec.partition_id or 0))

    def train_plain() -> TrainResult:  # the round without local DP, once the site's privacy has charged it
        loader = make_loader(
            rt.train_set, exp.train.batch_size, shuffle=True, seed=exp.seed * 1000 + server_round,
            drop_single=any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in rt.model.modules()),
        )  # fmt: skip
        return train(rt.model, loader, exp.train, proximal_mu=exp.strategy.local_proximal_mu, augment=augment)

    privacy = site_privacy(exp, rt, policy)
    done = privacy.train_round(
        rt.model, rt.train_set, train_plain, server_round=server_round, run_id=run_id, phase=phase, augment=augment
    )
    return done.as_dict()


def evaluate_round(
    exp: ExperimentConfig, rt: SiteRuntime, server_round: int, run_id: str, policy: SitePolicy = SIMULATION
) -> dict[str, float]:
    """Held-out evaluation; what is released follows privacy.site_metrics (common/privacy/governance/
    site_privacy.py). After the last round of a personalised job the site's own model is evaluated
    beside the references it must beat."""
    privacy = site_privacy(exp, rt, policy)
    loader = make_loader(rt.val_set, exp.train.eval_batch_size, shuffle=False)
    last = server_round == exp.strategy.rounds

    def personalise() -> dict[str, float]:
        extra: dict[str, float] = {}
        if exp.strategy.local_finetune:  # privacy.mode is off (common/config/experiment.py)
            if exp.strategy.personalize == "off":  # the global model, before the site's own epochs
                extra["global_accuracy"] = evaluate(rt.model, loader, len(rt.labels)).accuracy
            _finetune(exp, rt, policy, run_id)
        if privacy.without_dp:  # its steps are outside any DP mechanism
            extra["local_only_accuracy"] = _local_only_accuracy(exp, rt, policy, run_id)
        return extra

    done = privacy.evaluate_round(
        rt.model, loader, len(rt.labels), server_round=server_round, run_id=run_id,
        before_release=personalise if last and exp.strategy.personalized else None,
    )  # fmt: skip
    return done.as_dict()


def site_privacy(exp: ExperimentConfig, rt: SiteRuntime, policy: SitePolicy) -> SitePrivacy:
    """The site's privacy entry point for this job: every charge and release goes through it."""
    return SitePrivacy(exp, policy, rt.spec.name, lambda: ledger_path(exp, rt.spec, policy), len(rt.train_set))


def _finetune(exp: ExperimentConfig, rt: SiteRuntime, policy: SitePolicy, run_id: str) -> None:
    """``strategy.local_finetune`` epochs of the whole model on the site's records after the last
    round; the result is kept in the site's state folder and sent nowhere."""
    from common.personalize import finetuned_path, save_state, with_epochs

    loader = make_loader(
        rt.train_set, exp.train.batch_size, shuffle=True, seed=exp.seed * 1000 + exp.strategy.rounds + 1,
        drop_single=any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in rt.model.modules()),
    )  # fmt: skip
    train(rt.model, loader, with_epochs(exp.train, exp.strategy.local_finetune))
    path = finetuned_path(ledger_path(exp, rt.spec, policy), run_id)
    save_state({k: v.detach().cpu() for k, v in rt.model.state_dict().items()}, path)
    log.info("site %s: fine-tuned %d epoch(s) after the last round; kept at %s", rt.spec.name,
             exp.strategy.local_finetune, path)  # fmt: skip


def _local_only_accuracy(exp: ExperimentConfig, rt: SiteRuntime, policy: SitePolicy, run_id: str) -> float:
    """Held-out accuracy of the reference a personalised model must beat: the same model trained on
    this site's records alone for the epochs the site trains in the job (rounds x local epochs plus
    the fine-tuning epochs). Only without DP (its steps are outside any DP mechanism); computed once
    per job and kept in the site's state folder."""
    import json

    from common.personalize import head_path, with_epochs

    path = head_path(ledger_path(exp, rt.spec, policy), run_id).with_name(f"job-{run_id}.local-only.json")
    if path.is_file():
        return float(json.loads(path.read_text())["accuracy"])
    model = place(build_model(exp, len(rt.labels)), exp.train)
    epochs = exp.strategy.rounds * exp.train.local_epochs + exp.strategy.local_finetune
    loader = make_loader(
        rt.train_set, exp.train.batch_size, shuffle=True, seed=exp.seed * 1000 + 7,
        drop_single=any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
    )  # fmt: skip
    train(model, loader, with_epochs(exp.train, epochs))
    accuracy = evaluate(model, make_loader(rt.val_set, exp.train.eval_batch_size, shuffle=False), len(rt.labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"accuracy": accuracy.accuracy, "epochs": epochs}))
    return accuracy.accuracy


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "site"
