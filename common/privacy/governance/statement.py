"""The privacy statement every run writes: ``privacy.json`` beside ``MODEL_CARD.md`` and the card's
privacy section. It says what is protected (the unit and the adjacency), at what (epsilon, delta)
per site with the accountant, what else left the sites and how it was protected, what is not
protected, where the label set came from, every quantity the run's metrics.jsonl and model card
may hold with its protection (common/privacy/governance/inventory.py), and how to check each number
(common/privacy/governance/check.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common import baseline
from common.config import ExperimentConfig
from common.privacy.governance import inventory
from common.privacy.governance.release import EVAL_SENSITIVITY, LOSS_CAP, level

CHECK_COMMAND = "python -m common.privacy.governance.check"


def _releases(mode: str, how: str) -> list[str]:
    """What a DP site's replies carry beside its weights, at release level ``how`` (release.py)."""
    if how == "withhold":
        beyond = " beyond the DP parameters below (which reveal n to within one batch)" if mode == "local" else ""
        return [
            "aggregation weight: 1 for every site (uniform FedAvg); no record count, step count or training time "
            f"is sent{beyond}",
            "no training loss, no clip fraction, no held-out evaluation (the server does not ask for it)",
        ]
    ledger = (
        "charged to the site's ledger (inside epsilon)"
        if mode == "local"
        else "charged to the site's own record-level ledger (not part of the site-level epsilon above)"
    )
    if how == "noisy":
        return [
            "training-record count (the FedAvg weight): Gaussian noise, sensitivity 1, noise multiplier "
            f"privacy.release_noise_multiplier, {ledger}",
            f"held-out count, accuracy and loss (per-record loss clipped to {LOSS_CAP:g}): one Gaussian mechanism, "
            f"L2 sensitivity {EVAL_SENSITIVITY:.3f}, {ledger}",
            "no training loss, no clip fraction, no step count, no training time (withheld: no accounted mechanism)",
        ]
    clipped = ", fraction of per-sample gradients clipped" if mode == "local" else ""
    return [
        f"training-record count, training loss, step count, training time{clipped}, held-out count, loss, accuracy "
        "and macro-F1: exact, NOT protected by epsilon",
    ]


_DP_PARAMETERS = (
    "DP parameters of every round (noise multiplier, clipping norm, sample rate = 1/ceil(n/B), steps, delta, "
    "epsilon): functions of the configuration and of the record count n, which they reveal to within one "
    "batch (n is treated as public, as in every DP-SGD deployment)"
)
_ALWAYS = [
    "the site's name, and whether it answered or refused (with the rule it named)",
    "when its reply arrives: the coordinator records each round's wall time and training-phase time, which grow "
    "with the slowest site's amount of data (no site sends its step count or training time under DP unless "
    "privacy.site_metrics is exact)",
]
_CENTRAL_STATISTICS = (
    "the coordinator's statistics of each site's clipped update (norm, never above C; norm over the round's "
    "median; cosine to the median update), written to metrics.jsonl"
)


def build(exp: ExperimentConfig, privacy: dict[str, Any]) -> dict[str, Any]:
    mode = privacy.get("mode", "off")
    p = exp.privacy
    out: dict[str, Any] = {"mode": mode, "labels": inventory.labels_text(exp)}
    if mode == "off":
        out.update(
            protected="nothing: no differential privacy; the weights carry no formal guarantee",
            released_besides_weights=["all site metrics, exactly (record counts, losses, accuracies, steps, times)"],
            inventory=inventory.for_run(exp),
        )
        return out
    if mode == "local":
        out["unit_of_privacy"] = "one training record of one site"
        out["adjacency"] = (
            "add/remove one record (Poisson-sampled DP-SGD as accounted by Opacus). The record count is not "
            "itself hidden by this: it is withheld, noised and accounted, or released exactly, as below"
        )
        out["mechanism"] = "DP-SGD at each site (Opacus: Poisson sampling, per-sample clipping, Gaussian noise)"
    else:
        out["unit_of_privacy"] = "one site's entire contribution (all its records)"
        out["adjacency"] = "add/remove one site"
        out["mechanism"] = (
            "each site's update clipped to L2 norm C, equal-weight sum, Gaussian noise sigma*C on the sum, divided "
            "by the number of sites the round was sent to (common/privacy/governance/central.py)"
        )
        out["trust"] = "the coordinator sees every site's clipped update in the clear; the guarantee covers the model"
    out["accountant"] = p.accountant if mode == "local" else "rdp"
    out["sites"] = {
        name: {k: v for k, v in rec.items() if not (isinstance(v, float) and math.isnan(v))}
        for name, rec in privacy.get("sites", {}).items()
    }
    if mode == "central":
        out["central"] = {k: v for k, v in privacy.items() if k not in ("sites", "mode")}
    out["epsilon_max"] = max((v["epsilon"] for v in out["sites"].values()), default=0.0)
    if mode == "local" and baseline.features(exp) is not None and p.target_epsilon is not None:
        share = exp.baseline.epsilon_share
        out["budget_split"] = {
            "target_epsilon": p.target_epsilon,
            "baseline": {
                "features": baseline.features(exp),
                "share": share,
                "target_epsilon": p.target_epsilon * share,
            },
            "model": {"target_epsilon": p.target_epsilon * (1 - share)},
            "composition": "each part's DP-SGD is calibrated to its target; the sites' ledgers compose both "
            "(the epsilons above), which stays within the job's target",
        }
    out["released_besides_weights"] = (
        _releases(mode, level(p)) + ([_DP_PARAMETERS] if mode == "local" else [_CENTRAL_STATISTICS]) + _ALWAYS
    )
    out["not_protected"] = [
        "anything released exactly above",
        "membership of a site in the federation, and its data's distribution as far as the model reveals it "
        "within (epsilon, delta)",
        "the round and training-phase times the coordinator measures (the slowest site's amount of data)",
    ]
    if mode == "central":
        out["not_protected"].append(
            "a site's records against the coordinator, which sees each clipped update before noise (and the "
            "statistics of it in metrics.jsonl)"
        )
    out["check"] = (
        f"{CHECK_COMMAND} <ledger.json> --config <run>/config.yaml --records <n>: recomputes epsilon from the "
        "ledger and from a history built from the config, with an independent accountant where installed"
    )
    out["inventory"] = inventory.for_run(exp)
    return out


def write(folder: Path, exp: ExperimentConfig, privacy: dict[str, Any]) -> dict[str, Any]:
    data = build(exp, privacy)
    (folder / "privacy.json").write_text(json.dumps(data, indent=1, default=_plain))
    return data


def lines(data: dict[str, Any]) -> list[str]:
    """The statement in words (model card, end-of-run summary)."""
    labels = f"Label set: {data.get('labels', 'not stated')}."
    listed = "Every quantity in metrics.jsonl and in this card, with its protection: privacy.json, under 'inventory'."
    if data["mode"] == "off":
        return ["No differential privacy: the weights carry no formal privacy guarantee; site metrics were "
                "released exactly.", labels, listed]  # fmt: skip
    out = [f"Unit of privacy: {data['unit_of_privacy']}; adjacency: {data['adjacency']}.",
           f"Mechanism: {data['mechanism']}; accountant: {data['accountant']}."]  # fmt: skip
    for name, v in sorted(data["sites"].items()):
        out.append(
            f"Site '{name}': (epsilon={v['epsilon']:.4f}, delta={v['delta']:.3g}) over everything recorded in its "
            f"ledger; this run: epsilon={v.get('epsilon_run', v['epsilon']):.4f}."
        )
    split = data.get("budget_split")
    if split:
        out.append(
            f"Budget split: the baseline (linear on {split['baseline']['features']}) was calibrated to epsilon "
            f"{split['baseline']['target_epsilon']:g} and the model to {split['model']['target_epsilon']:g} of the "
            f"job's target {split['target_epsilon']:g}; the site figures above compose both."
        )
    out += [f"Released beside the weights: {r}." for r in data["released_besides_weights"]]
    out += [f"Not protected: {r}." for r in data["not_protected"]]
    out += [labels, listed, f"Check: {data['check']}."]
    return out


def _plain(v: Any) -> Any:
    return str(v)
