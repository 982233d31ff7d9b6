"""Membership-inference audit of one finished simulated run (the study harness's side).

Members: the training records of one site (``audit.site``), rebuilt exactly as that site built
them (``common.site.site_records`` over the same partition). Non-members, label-matched to the
members with equal counts, come from the same split of the same file when it has enough:
that site's own held-out records and the training records no site was given
(``data.max_samples``). Otherwise from the server's test split, which can differ in
distribution from the training split (PneumoniaMNIST's does: a collapsed model that predicts
one class scores AUC 0.53 against test-split non-members and 0.50 against held-out training
records), so the table says which source was used.

The attacked model is the run's exported final global model. Reference models for the
calibrated attack are trained here, centrally and without DP, on the *other* sites' records
(never the members, never a non-member) with the sites' recipe: a sample the size of the
members' site, ``strategy.rounds`` times ``train.local_epochs`` (and ``train.max_steps``). They
do not depend on the privacy setting, so cells that differ only in privacy share them (cached).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import atomic
from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.config import ExperimentConfig, ModelConfig
from common.data import LabelSet, RawData, Unlabelled, read_test, read_train
from common.errors import ConfideError
from common.export import load_model
from common.models import build_model
from common.partition import partition_indices
from common.site import SiteSpec, site_records
from common.train import train
from simulations.study.membership import SampleScores, calibrated_attack, loss_attack, matched_sample, sample_scores
from simulations.study.sweep_spec import AuditSettings

log = logging.getLogger(__name__)


def audit_run(run: Path, settings: AuditSettings, cache_dir: Path) -> dict[str, Any]:
    """Attack results for the run's final model, or ``{"skipped": reason}``."""
    exp = config_mod.load(run / "config.yaml")
    labels = LabelSet(exp.data.labels)
    if settings.site >= exp.data.num_sites:
        return {"skipped": f"audit.site={settings.site} but the run has {exp.data.num_sites} sites"}
    spec = SiteSpec(f"site-{settings.site}", settings.site, exp.data.num_sites)
    site_train, site_held_out = site_records(exp, spec, labels)
    found = _nonmember_pool(exp, labels, site_train, site_held_out, settings)
    if found is None:
        return {"skipped": "too few held-out training records and no test split to draw non-members from"}
    pool, source = found
    m_idx, n_idx = matched_sample(site_train.labels, pool.labels, settings.max_records, exp.seed)
    members, nonmembers = site_train.subset(m_idx), pool.subset(n_idx)

    saved = load_model(run / "model")
    target = (
        _scores(saved.model, saved.model_cfg, members, exp),
        _scores(saved.model, saved.model_cfg, nonmembers, exp),
    )
    out: dict[str, Any] = {
        "mia_records": float(len(m_idx)),
        "nonmembers": source,
        **loss_attack(*target).as_dict("mia_loss"),
    }
    if settings.reference_models:
        population = _population(exp, labels, settings.site)
        if len(population) == 0:
            out["calibrated_skipped"] = "no records outside the audited site to train reference models on"
            return out
        key = _reference_key(exp, settings, source, m_idx, n_idx)
        refs = [
            _reference(exp, labels, population, len(site_train), members, nonmembers, k, cache_dir / f"{key}-{k}.npz")
            for k in range(settings.reference_models)
        ]
        out.update(calibrated_attack(*target, [r[0] for r in refs], [r[1] for r in refs]).as_dict("mia_calibrated"))
    return out


def _scores(model: torch.nn.Module, model_cfg: ModelConfig, raw: RawData, exp: ExperimentConfig) -> SampleScores:
    return sample_scores(model, make_dataset(raw, model_cfg), exp.train.eval_batch_size)


def _nonmember_pool(
    exp: ExperimentConfig, labels: LabelSet, members: RawData, held_out: RawData, settings: AuditSettings
) -> tuple[RawData, str] | None:
    """Same-split held-out records when they match at least half the members wanted, else the test split."""
    pool = _concat([held_out, _unused_records(exp, labels)])
    wanted = min(len(members), settings.max_records or len(members))
    try:
        matchable = len(matched_sample(members.labels, pool.labels, 0, exp.seed)[0])
    except ConfideError:  # no label in common
        matchable = 0
    if matchable * 2 >= wanted:
        return pool, "held-out training-split records"
    test = read_test(exp.data)
    if test is None:
        return None
    return test.with_labels(labels, where=exp.data.test_path or exp.data.path or exp.data.source), "test split"


def _unused_records(exp: ExperimentConfig, labels: LabelSet) -> RawData:
    """Training-file records past ``data.max_samples`` (no site was given them) with a known label."""
    everything = read_train(config_mod.replace(exp, **{"data.max_samples": 0}).data)
    known = set(labels.names)
    start = len(read_train(exp.data).raw_labels)
    keep = [i for i in range(start, len(everything.raw_labels)) if everything.raw_labels[i] in known]
    rest = Unlabelled(
        [everything.raw_labels[i] for i in keep],
        texts=tuple(everything.texts[i] for i in keep) if everything.texts is not None else None,
        images=everything.images[keep] if everything.images is not None else None,
    )
    return rest.with_labels(labels, where=exp.data.path or exp.data.source)


def _concat(parts: list[RawData]) -> RawData:
    return RawData(
        labels=np.concatenate([p.labels for p in parts]),
        texts=sum((p.texts for p in parts), ()) if parts[0].texts is not None else None,
        images=np.concatenate([p.images for p in parts]) if parts[0].images is not None else None,
    )


def _population(exp: ExperimentConfig, labels: LabelSet, site: int) -> RawData:
    """Every training record outside the audited site's partition."""
    everything = read_train(exp.data).with_labels(labels, where=exp.data.path or exp.data.source)
    parts = partition_indices(everything.labels, exp.data, exp.seed)
    others = np.sort(np.concatenate([p for i, p in enumerate(parts) if i != site] or [np.empty(0, np.int64)]))
    return everything.subset(others)


def _reference(
    exp: ExperimentConfig,
    labels: LabelSet,
    population: RawData,
    size: int,
    members: RawData,
    nonmembers: RawData,
    k: int,
    cache: Path,
) -> tuple[SampleScores, SampleScores]:
    """Reference model k's scores on members and non-members (trained once, then read from cache)."""
    if cache.is_file():
        with np.load(cache) as z:
            return SampleScores(z["m_loss"], z["m_phi"]), SampleScores(z["n_loss"], z["n_phi"])
    ref_exp = _reference_experiment(exp, k)
    rng = np.random.default_rng(ref_exp.seed)
    sample = population.subset(np.sort(rng.choice(len(population), min(size, len(population)), replace=False)))
    model = build_model(ref_exp, len(labels))
    dataset = make_dataset(sample, ref_exp.model)
    log.info("audit: training reference model %d on %d population records", k, len(sample))
    for r in range(ref_exp.strategy.rounds):
        train(
            model,
            make_loader(dataset, ref_exp.train.batch_size, shuffle=True, seed=ref_exp.seed * 1000 + r),
            ref_exp.train,
        )
    m, n = _scores(model, ref_exp.model, members, ref_exp), _scores(model, ref_exp.model, nonmembers, ref_exp)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(cache) as fh:
        np.savez(fh, m_loss=m.loss, m_phi=m.phi, n_loss=n.loss, n_phi=n.phi)
    return m, n


def _reference_experiment(exp: ExperimentConfig, k: int) -> ExperimentConfig:
    # Trained without DP: the whole privacy section back to its defaults (mode off), since a DP
    # setting left beside mode off is refused.
    return config_mod.replace(exp, **{"privacy": {}, "seed": exp.seed + 7919 * (k + 1)})


def _reference_key(
    exp: ExperimentConfig, settings: AuditSettings, source: str, m_idx: np.ndarray, n_idx: np.ndarray
) -> str:
    """Identifies a reference model: the config without its privacy section, and the audited records."""
    cfg = config_mod.to_dict(exp)
    for key in ("name", "output_dir", "privacy"):
        cfg.pop(key)
    cfg["train"].pop("threads")
    digest = hashlib.sha256(
        json.dumps({"cfg": cfg, "site": settings.site, "nonmembers": source}, sort_keys=True).encode()
    )
    digest.update(m_idx.tobytes())
    digest.update(n_idx.tobytes())
    return digest.hexdigest()[:16]
