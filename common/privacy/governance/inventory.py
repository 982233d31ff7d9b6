"""Every quantity a run writes to ``metrics.jsonl`` and ``MODEL_CARD.md``, with how it is protected.

The keys are normalised: a site's name is ``<site>`` and a list's items are ``[]`` (so
``sites.<site>.train.weight``, ``failures[].reason``). What is written, and how it is protected,
depends on ``privacy.mode`` and on ``privacy.site_metrics`` (common/privacy/governance/release.py): ``for_run``
lists exactly what a run of that configuration may write, and the privacy statement carries it,
so a key that is not listed there must not appear in the run's files (tests/test_release_inventory.py
runs a job in each mode and checks). ``site_table`` renders the part that leaves a site, in every
mode and level, for docs/privacy.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config import ExperimentConfig

SITE = "<site>"
MODES = ("off", "local", "central")
LEVELS = ("withhold", "noisy", "exact")


@dataclass(frozen=True)
class Protection:
    short: str  # a table cell (docs/privacy.md)
    text: str  # privacy.json


NO_DP = Protection("exact, no DP", "exact; this job has no differential privacy, so nothing is protected")
EXACT = Protection("exact, outside ε", "exact: NOT protected by epsilon (privacy.site_metrics=exact)")
NOISY_LOCAL = Protection(
    "noised, inside ε",
    "Gaussian noise (privacy.release_noise_multiplier), charged to the site's ledger: inside its epsilon",
)
NOISY_CENTRAL = Protection(
    "noised, site's own ledger",
    "Gaussian noise (privacy.release_noise_multiplier), charged to the site's own record-level ledger: not "
    "part of the site-level epsilon of this statement",
)
UNIFORM = Protection("1 (constant)", "the constant 1 (uniform FedAvg): nothing about the records")
DP_PARAMETER = Protection(
    "reveals n within a batch",
    "a DP-SGD parameter or accountant figure: a function of the configuration and of the site's record count n "
    "(sample rate 1/ceil(n/B)), which it reveals to within one batch (n is treated as public)",
)
STATS = {
    "off": Protection(
        "exact, no DP", "computed by the coordinator from the update it received; no differential privacy in this job"
    ),
    "local": Protection(
        "post-processing, inside ε",
        "computed by the coordinator from the DP-SGD update it received: post-processing, inside each site's epsilon",
    ),
    "central": Protection(
        "of the clipped update, outside ε",
        "computed by the coordinator from the update clipped to norm C (never above C), which it is trusted to see "
        "before noise: NOT protected by the site-level epsilon, which covers the model",
    ),
}
SIZE = Protection(
    "size only", "bytes of the update as received: set by the model and the transport settings, not by the records"
)
TIMING = Protection(
    "measured, unprotected",
    "measured by the coordinator (until the last reply arrived): grows with the slowest site's amount of data; "
    "NOT protected by epsilon",
)
FAULT = Protection("test flag", "the failure-injection flag of a test run (client/faults.py): not about the records")
BOOKKEEPING = Protection("bookkeeping", "run bookkeeping by the coordinator: not about any site's records")
FAILURE = Protection(
    "which site failed",
    "which site failed, refused or was rejected, and in which phase: its answer (or silence), not its records",
)


def reason(mode: str) -> Protection:
    """Why a site failed or was rejected; under central DP the coordinator checks the clipped update."""
    checked = "the clipped update it sees before noise" if mode == "central" else "the update it received"
    return Protection(
        "the reason",
        "the reason: a site's refusal or error text (a deployed site's carries no data, client/public_errors.py) or "
        f"the coordinator's check of {checked}",
    )


CENTRAL_TEST = Protection(
    "coordinator's test set", "the coordinator's own test set (data.test_path or the built-in split): no site's records"
)
CENTRAL_ACCOUNTANT = Protection(
    "accountant",
    "the coordinator's site-level accountant: a function of the configuration and of which sites took part",
)
CONFIGURATION = Protection("configuration", "the job's configuration: public, not a release")
STATEMENT = Protection("this statement", "this privacy statement")
LABELS_DECLARED = "declared in the job: public, not a release"
LABELS_DERIVED = (
    "derived from the pooled training records by the coordinator (simulation only): a release about the records "
    "that no epsilon covers"
)

TRAIN_KEYS = ("weight", "num_examples", "train_loss", "train_steps", "train_seconds", "fraction_clipped")
DP_KEYS = ("noise_multiplier", "max_grad_norm", "sample_rate", "steps", "delta", "epsilon", "epsilon_run")
EVAL_KEYS = ("weight", "num_examples", "num_examples_noisy", "loss", "accuracy", "macro_f1")
STATS_KEYS = ("update_norm", "update_norm_ratio", "update_cosine_to_median")
CENTRAL_KEYS = ("loss", "accuracy", "macro_f1", "num_examples", "roc_auc")
CENTRAL_PRIVACY_KEYS = ("epsilon", "delta", "noise_multiplier", "clipping_norm", "rounds", "accountant",
                        "ledger", "updates_summed", "sites_sent")  # fmt: skip
CARD_COLUMNS = ("accuracy", "macro_f1", "roc_auc", "loss", "records")


def _level(mode: str, site_metrics: str) -> str:
    return "exact" if mode == "off" else site_metrics


def site_train(mode: str, site_metrics: str) -> dict[str, Protection]:
    """What a site's training reply carries (common/privacy/governance/release.py and dpsgd.py; the
    failure-injection flag only where a test injects faults, client/faults.py)."""
    how = _level(mode, site_metrics)
    exact = NO_DP if mode == "off" else EXACT
    out: dict[str, Protection] = {}
    if how == "exact":
        out |= dict.fromkeys(("weight", "num_examples", "train_loss", "train_steps", "train_seconds"), exact)
        if mode == "local":
            out["fraction_clipped"] = EXACT
    elif how == "noisy":
        out["weight"] = NOISY_LOCAL if mode == "local" else NOISY_CENTRAL
    else:
        out["weight"] = UNIFORM
    if mode == "local":
        out |= dict.fromkeys(DP_KEYS, DP_PARAMETER)
    return out | {"fault_injected": FAULT}


def site_evaluate(mode: str, site_metrics: str) -> dict[str, Protection]:
    """What a site's evaluation reply carries (none under ``withhold``: the coordinator does not ask)."""
    how = _level(mode, site_metrics)
    if how == "exact":
        exact = NO_DP if mode == "off" else EXACT
        # strategy.personalize / local_finetune (last round, only without DP): the local-only reference
        # model's and the global model's held-out accuracy beside the site's own model's
        personal = ("local_only_accuracy", "global_accuracy") if mode == "off" else ()
        return dict.fromkeys(("weight", "num_examples", "loss", "accuracy", "macro_f1", *personal), exact)
    if how == "noisy":
        noisy = NOISY_LOCAL if mode == "local" else NOISY_CENTRAL
        return dict.fromkeys(("weight", "num_examples_noisy", "loss", "accuracy"), noisy)
    return {}


def coordinator_per_site(mode: str) -> dict[str, Protection]:
    """What the coordinator records beside a site's training metrics, from the reply itself."""
    return {"bytes_up": SIZE} | dict.fromkeys(STATS_KEYS, STATS[mode])


def metrics_jsonl(mode: str, site_metrics: str) -> dict[str, str]:
    """Every key ``metrics.jsonl`` may hold in this mode and level, with its protection."""
    train = site_train(mode, site_metrics) | coordinator_per_site(mode)
    evaluate = site_evaluate(mode, site_metrics)
    sends_time = "train_seconds" in train
    out: dict[str, Protection] = {
        "round": BOOKKEEPING,
        "run_id": BOOKKEEPING,
        "bytes_down_per_site": SIZE,
        "wall_seconds": TIMING,
        "train_phase_seconds": TIMING,
        "slowest_site_train_seconds": (
            train["train_seconds"] if sends_time else Protection("null", "null: no site releases its training time")
        ),
        "failures[].site": FAILURE,
        "failures[].phase": FAILURE,
        "failures[].reason": reason(mode),
        "privacy.mode": CONFIGURATION,
    }
    out |= {f"central.{k}": CENTRAL_TEST for k in CENTRAL_KEYS}
    out |= {f"sites.{SITE}.train.{k}": p for k, p in train.items()}
    out |= {f"sites.{SITE}.evaluate.{k}": p for k, p in evaluate.items()}
    # The round's summaries are functions of the per-site values: the same protection.
    out |= {f"train.{k}": p for k, p in train.items()}
    out |= {f"federated.{k}": p for k, p in evaluate.items()}
    out |= {f"federated.worst_{k}": evaluate[k] for k in ("accuracy", "macro_f1") if k in evaluate}
    if mode == "local":
        out |= {f"privacy.sites.{SITE}.{k}": DP_PARAMETER for k in (*DP_KEYS, "steps_run", "rounds_run")}
    if mode == "central":
        out |= {f"privacy.{k}": CENTRAL_ACCOUNTANT for k in CENTRAL_PRIVACY_KEYS}
        out |= {f"privacy.sites.{SITE}.{k}": CENTRAL_ACCOUNTANT for k in ("epsilon", "epsilon_run", "delta")}
    return {k: p.text for k, p in sorted(out.items())}


def model_card(mode: str, site_metrics: str, labels: str, final_model: str = "auto") -> dict[str, str]:
    """Every quantity ``MODEL_CARD.md`` may show in this mode and level (common/export.py)."""
    evaluate = site_evaluate(mode, site_metrics)
    out = {
        "model": CONFIGURATION.text,
        "labels": labels,
        "data": CONFIGURATION.text,
        "federation": "the job's configuration, and how many sites took part or failed: run bookkeeping",
        "privacy": STATEMENT.text,
        "failures": f"{FAILURE.text}; {reason(mode).text}",
    }
    columns = {"records": "num_examples"}
    out |= {f"metrics.central.{c}": CENTRAL_TEST.text for c in CARD_COLUMNS}
    for column in CARD_COLUMNS:
        source = evaluate.get(columns.get(column, column))
        if source is not None:
            out[f"metrics.federated.{column}"] = source.text
            out[f"sites.{SITE}.{column}"] = source.text
    if "accuracy" in evaluate:
        out["exported"] = (
            "which round's model was exported, or the baseline in its place, chosen on federated.accuracy: "
            f"{evaluate['accuracy'].text}"
        )
        # the Personalisation table (strategy.personalize / local_finetune jobs): the site's own model's
        # held-out accuracy, and without DP the local-only and global references beside it
        out[f"sites.{SITE}.personalised accuracy"] = evaluate["accuracy"].text
        for column, key in (("local-only accuracy", "local_only_accuracy"), ("global accuracy", "global_accuracy")):
            if key in evaluate:
                out[f"sites.{SITE}.{column}"] = evaluate[key].text
    else:
        out["exported"] = "which round's model was exported (the last one: no site releases a held-out accuracy)"
    if final_model == "tail_average":  # the rounds averaged follow from strategy.rounds and tail_rounds alone
        out["exported"] = f"which rounds' global models were averaged: {CONFIGURATION.text}"
    return dict(sorted(out.items()))


def labels_text(exp: ExperimentConfig) -> str:
    return LABELS_DERIVED if exp.data.labels_from_records else LABELS_DECLARED


def for_run(exp: ExperimentConfig) -> dict[str, dict[str, str]]:
    """The inventory privacy.json carries: file -> normalised key -> protection."""
    mode, level = exp.privacy.mode, exp.privacy.site_metrics
    return {
        "metrics.jsonl": metrics_jsonl(mode, level),
        "MODEL_CARD.md": model_card(mode, level, labels_text(exp), exp.strategy.final_model),
    }


def _cells(mode: str, level: str) -> dict[str, Protection]:
    return (
        {f"training reply: {k}": p for k, p in site_train(mode, level).items()}
        | {f"evaluation reply: {k}": p for k, p in site_evaluate(mode, level).items()}
        | {f"coordinator, from the reply: {k}": p for k, p in coordinator_per_site(mode).items()}
    )


TIMES_ROW = "coordinator's clock: wall_seconds, train_phase_seconds"


def site_table() -> list[str]:
    """docs/privacy.md's table "What leaves a site, in each mode": one row per quantity a site's
    replies carry or the coordinator records from them, one column per mode and release level
    (``privacy.site_metrics``; without DP everything is exact)."""
    columns = [("off", "exact")] + [(m, lv) for m in ("local", "central") for lv in LEVELS]
    cells = {c: _cells(*c) for c in columns}
    order = ("training", "evaluation", "coordinator")
    rows = sorted({k for c in cells.values() for k in c}, key=lambda k: (order.index(k.split()[0].rstrip(",")), k))
    header = ["quantity (metrics.jsonl key)", "off"] + [f"{m}, {lv}" for m, lv in columns[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        values = [cells[c][row].short if row in cells[c] else "not sent" for c in columns]
        lines.append(f"| {row} | " + " | ".join(values) + " |")
    lines.append(f"| {TIMES_ROW} | " + " | ".join([TIMING.short] * len(columns)) + " |")
    return lines
