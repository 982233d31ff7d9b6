"""``confide plan``: what a DP-SGD job will do at each site, before it runs.

    confide plan simulations/configs/hospital_resnet_pneumonia.yaml --set privacy.mode=local \\
        --set privacy.target_epsilon=8                         # the simulation's partitions
    confide plan job.yaml --data-path /data/site.npz           # a deployed site, its own file
    confide plan job.yaml --records 950,920,1150               # the coordinator: declared counts

Per site: training records n, expected batch B, sample rate q, steps per round, rounds, noise
multiplier sigma (calibrated exactly as the site will: common/privacy/governance/dpsgd.py), delta, the job's
cumulative epsilon after each round, the per-coordinate noise on the averaged gradient
sigma*C/B, and where the site's records are readable here the fraction of per-sample gradients
above C on a few batches (the first round's model, the sites' own clipping engine). Then a
verdict against the project's measured runs (common/privacy/governance/plan.py, docs/privacy.md).

Nothing is released, no ledger is written and no connection is opened: a plan is computed
locally from the config and the records. ``--records N``: each site's record count before the
held-out split (data.val_fraction), as the site holds them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import logs
from common.cli import Parser, existing_file, parse_sets, prog, refuse, require
from common.config import ExperimentConfig
from common.errors import ConfideError

log = logging.getLogger(__name__)

PROBE_MAX_WEIGHTS = 5_000_000  # beyond this (full fine-tuning of a transformer) the probe is skipped: too slow on CPU


@dataclasses.dataclass(frozen=True)
class Site:
    name: str
    records: int  # training records
    train: Any = None  # RawData of the training records, where readable here


def _parser() -> Parser:
    parser = Parser(prog=prog("python -m client.plan"), description=__doc__.split("\n\n")[1])
    parser.add_argument("experiment", type=Path, help="the job's experiment YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--data-path", type=Path, help="a deployed site's own data file (one site)")
    parser.add_argument("--site", default="site", help="the deployed site's name in the table (default: site)")
    parser.add_argument(
        "--records", action="append", default=[], metavar="N[,N...]",
        help="each site's record count, before the held-out split (repeatable or a comma list)",
    )  # fmt: skip
    parser.add_argument(
        "--probe-batches", type=int, default=3, metavar="K",
        help="batches of the site's records for the clip-fraction probe (0: none; default 3)",
    )  # fmt: skip
    return parser


def parse_records(items: list[str]) -> list[int]:
    counts: list[int] = []
    for part in (p.strip() for item in items for p in item.split(",")):
        require(
            part.isdigit() and int(part) >= 2, f"--records expects whole numbers >= 2 (train + held-out); got {part!r}"
        )
        counts.append(int(part))
    return counts


def load_job(path: Path, sets: list[str]) -> ExperimentConfig:
    from common import config

    exp = config.load(existing_file(path, "experiment"), parse_sets(sets))
    require(
        exp.privacy.local,
        f"{path}: privacy.mode is '{exp.privacy.mode}'; confide plan plans local DP-SGD (privacy.mode: local)",
    )
    return exp


def simulated_sites(exp: ExperimentConfig) -> tuple[list[Site], Any]:
    """The simulation's partitions, each split as the simulated site splits it."""
    from common.data import check_sites, label_set, read_train
    from common.site import SiteSpec, site_records

    check_sites(exp.data, exp.seed)
    labels = label_set(exp.data, None if exp.data.labels else read_train(exp.data))
    sites = []
    for i in range(exp.data.num_sites):
        spec = SiteSpec(name=f"site-{i}", partition_id=i, num_partitions=exp.data.num_sites)
        train, _ = site_records(exp, spec, labels)
        sites.append(Site(spec.name, len(train), train))
    return sites, labels


def deployed_site(exp: ExperimentConfig, path: Path, name: str) -> tuple[list[Site], Any]:
    """A deployed site's own file, read and split as its ClientApp will."""
    from common.data import label_set, read_train
    from common.site import SiteSpec, site_records

    existing_file(path, "--data-path")
    labels = label_set(exp.data, None if exp.data.labels else read_train(exp.data, str(path)))
    spec = SiteSpec(name=name, data_path=str(path))
    train, _ = site_records(exp, spec, labels)
    return [Site(name, len(train), train)], labels


def declared_sites(exp: ExperimentConfig, counts: list[int]) -> tuple[list[Site], Any]:
    """Declared record counts, split as each site will split them (the sizes depend on n alone)."""
    from common.data import LabelSet
    from common.partition import train_val_split

    labels = LabelSet(exp.data.labels) if exp.data.labels else None
    sites = []
    for i, n in enumerate(counts):
        train, _ = train_val_split(n, exp.data.val_fraction, exp.seed + i, f"site-{i}")
        sites.append(Site(f"site-{i}", len(train)))
    return sites, labels


def trainable_weights(exp: ExperimentConfig, labels: Any) -> int | None:
    """Weights DP-SGD noises in the job's last round (the head alone when every round is head-only)."""
    if labels is None:
        return None
    from common.models import build_model
    from common.train import head_only

    model = build_model(exp, len(labels))
    with head_only(model, exp.train.head_only_rounds >= exp.strategy.rounds):
        return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextmanager
def _no_feature_cache() -> Iterator[None]:
    """The probe computes features without storing them: a plan writes nothing."""
    old = os.environ.get("CONFIDE_FEATURE_CACHE")
    os.environ["CONFIDE_FEATURE_CACHE"] = "off"
    try:
        yield
    finally:
        if old is None:
            del os.environ["CONFIDE_FEATURE_CACHE"]
        else:
            os.environ["CONFIDE_FEATURE_CACHE"] = old


def clip_fraction(exp: ExperimentConfig, site: Site, labels: Any, plan: Any, batches: int) -> float:
    """Fraction of per-sample gradient norms above C over ``batches`` DP-SGD steps of the first
    round's model on the site's own records (the site's engine and noise; the model is discarded)."""
    import numpy as np

    from common.batches import make_dataset
    from common.models import build_model
    from common.privacy.governance.plan import probe_clipping

    keep = min(site.records, batches * exp.train.batch_size)
    raw = site.train.subset(np.random.default_rng(exp.seed).permutation(site.records)[:keep])
    with _no_feature_cache():
        dataset = make_dataset(raw, exp.model)
    model = build_model(exp, len(labels))
    train_cfg = dataclasses.replace(exp.train, max_steps=batches, local_epochs=1, progress_seconds=0.0)
    with _head_only_first_round(exp, model):
        return probe_clipping(model, dataset, train_cfg, exp.privacy, plan)


@contextmanager
def _head_only_first_round(exp: ExperimentConfig, model: Any) -> Iterator[None]:
    from common.train import head_only

    with head_only(model, exp.train.head_only_rounds >= 1):
        yield


def render(exp: ExperimentConfig, plans: list[Any], clips: dict[str, str], verdict_lines: tuple[str, ...]) -> str:
    rows = [("site", "n", "B", "q", "steps/round", "rounds", "sigma", "delta", "sigma*C/B", "clipped")]
    for p in plans:
        rp = p.round_plan
        rows.append((
            p.site, str(p.records), str(p.batch), f"{rp.sample_rate:.4g}", str(rp.steps), str(p.rounds),
            f"{rp.noise_multiplier:.4g}", f"{rp.delta:.3g}", f"{p.noise_std:.4g}", clips.get(p.site, "-"),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    target = exp.privacy.target_epsilon
    calib = (
        f"calibrated to privacy.target_epsilon={target:g}" if target is not None else "privacy.noise_multiplier as set"
    )
    lines.append("")
    lines.append(
        f"cumulative epsilon of this job ({exp.privacy.accountant} accountant, {calib}; "
        f"C = {exp.privacy.max_grad_norm:g}):"
    )
    for p in plans:
        lines.append(f"  {p.site}: " + ", ".join(f"round {r}: {e:.3f}" for r, e in p.epsilons))
    lines.append("")
    lines.extend(verdict_lines)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logs.setup()  # Confide's lines; the libraries' notices (an accountant's order warnings) left out
    try:
        args = _parser().parse_args(argv)
        require(
            not (args.data_path and args.records),
            "--data-path (a site's own file) and --records (declared counts) exclude each other",
        )
        require(args.probe_batches >= 0, f"--probe-batches must be >= 0; got {args.probe_batches}")
        counts = parse_records(args.records)
        exp = load_job(args.experiment, args.set)
        if args.data_path:
            sites, labels = deployed_site(exp, args.data_path, args.site)
        elif counts:
            sites, labels = declared_sites(exp, counts)
        else:
            sites, labels = simulated_sites(exp)
        print(report(exp, sites, labels, args.probe_batches))
    except ConfideError as exc:
        return refuse(exc)
    return 0


def report(exp: ExperimentConfig, sites: list[Site], labels: Any, probe_batches: int) -> str:
    from common import baseline
    from common.privacy.governance.plan import plan_site, verdict

    job_exp, exp = exp, baseline.model_experiment(exp)  # the model's rounds: the budget less the baseline's

    d = trainable_weights(exp, labels)
    plans = [plan_site(exp, s.name, s.records, d) for s in sites]
    clips: dict[str, str] = {}
    notes: list[str] = []
    readable = [s for s in sites if s.train is not None]
    if labels is None:
        notes.append("model not built: data.labels is not in the config (the number of classes sets the head's size)")
    elif not readable:
        notes.append("clipped: not probed (no records readable here)")
    elif probe_batches == 0:
        notes.append("clipped: not probed (--probe-batches 0)")
    elif d is not None and d > PROBE_MAX_WEIGHTS:
        notes.append(f"clipped: not probed ({d:,} trained weights: full fine-tuning is too slow to probe here)")
    else:
        for s, p in zip(sites, plans, strict=True):
            if s.train is not None:
                clips[s.name] = f"{clip_fraction(exp, s, labels, p.round_plan, probe_batches):.2f}"
        notes.append(
            f"clipped: fraction of per-sample gradient norms above C over {probe_batches} batches "
            "of the first round's model"
        )
    notes.extend(length_lines(exp, readable))
    notes.append(baseline_line(job_exp))
    return render(exp, plans, clips, (*notes, *verdict(exp, plans).lines))


def baseline_line(exp: ExperimentConfig) -> str:
    """What the job's baseline (common/baseline.py) takes of the budget, in one line."""
    from common import baseline

    feature = baseline.features(exp)
    if feature is None:
        return f"baseline: none ({baseline.why_off(exp)})"
    target, share = exp.privacy.target_epsilon or 0.0, exp.baseline.epsilon_share
    return (
        f"baseline: a linear layer on {feature} trained first at epsilon {target * share:g} "
        f"(baseline.epsilon_share {share:g} of {target:g}); the rounds above are the model's, "
        f"at {target * (1 - share):g}"
    )


def length_lines(exp: ExperimentConfig, sites: list[Site]) -> list[str]:
    """Per readable site of a text job: its token lengths against model.max_length, and the rule's
    value (common/text_lengths.py). Printed here only; nothing is sent."""
    if not exp.model.is_text or exp.model.name == "linear" or not sites:
        return []
    from common.checkpoints import checkpoint_path, load_tokenizer
    from common.text_lengths import measure, token_counts

    tokenizer = load_tokenizer(checkpoint_path(exp.model))
    limit = int(getattr(tokenizer, "model_max_length", 512) or 512)
    ceiling = limit if limit < 100_000 else 512  # tokenizers without a limit report a huge number
    lines = []
    for site in sites:
        m = measure(token_counts(site.train.texts, tokenizer), exp.model.max_length, ceiling)
        lines.append(
            f"token lengths at {site.name}: median {m.p50}, 95th percentile {m.p95}, longest {m.longest}; "
            f"model.max_length={exp.model.max_length} cuts {100 * m.truncated:.1f} % of records; "
            f"the rule (95th percentile, rounded up to a multiple of 8) gives {m.suggested}"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
