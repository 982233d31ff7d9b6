"""Final model export in forms plain libraries load, plus the model card.

- bert: a ``save_pretrained`` folder (weights, config with id2label, tokenizer);
  ``AutoModelForSequenceClassification.from_pretrained(folder)`` loads it.
- resnet: ``model.pt`` (a torch state_dict) beside ``confide.yaml``, which holds the
  model config and labels needed to rebuild the torchvision network.
Both folders carry ``confide.yaml`` so ``load_model`` and the scorer can rebuild them. It records
only the model fields of the exported family (``family_fields``): a reader fills the other
family's fields with their defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from common import config as config_mod
from common.config import ExperimentConfig, ModelConfig
from common.data import LabelSet
from common.errors import ConfideError
from common.models import build_model, checkpoint_path, load_tokenizer, merged, use_pooling

log = logging.getLogger(__name__)

META = "confide.yaml"
RESNET_WEIGHTS = "model.pt"
# ModelConfig fields that only one model family reads; an export leaves out the other family's.
BERT_ONLY = ("checkpoint", "max_length", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "pooling", "head_init")
RESNET_ONLY = ("in_channels", "small_input", "weights", "norm")


@dataclass(frozen=True)
class SavedModel:
    model: nn.Module
    model_cfg: ModelConfig
    labels: LabelSet
    experiment: dict[str, Any]


def save_model(model: nn.Module, exp: ExperimentConfig, labels: LabelSet, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if exp.model.name == "bert":  # a Hugging Face folder; every other model is a state_dict file
        model = merged(model)
        model.config.id2label = dict(enumerate(labels.names))
        model.config.label2id = {n: i for i, n in enumerate(labels.names)}
        model.save_pretrained(folder)
        load_tokenizer(checkpoint_path(exp.model)).save_pretrained(folder)
    else:
        torch.save(model.state_dict(), folder / RESNET_WEIGHTS)
    model_fields = family_fields(exp.model)
    experiment = {**config_mod.to_dict(exp), "model": model_fields}
    meta = {"model": model_fields, "labels": list(labels.names), "experiment": experiment}
    (folder / META).write_text(yaml.safe_dump(meta, sort_keys=False))


def family_fields(cfg: ModelConfig) -> dict[str, Any]:
    """The model config as exported: without the fields only the other model family reads."""
    other = RESNET_ONLY if cfg.is_text else BERT_ONLY
    return {k: v for k, v in config_mod.to_dict(cfg).items() if k not in other}


@dataclass(frozen=True)
class ExportInfo:
    """What an export folder records, read and checked without building the model."""

    model_cfg: ModelConfig  # as the run configured it
    labels: LabelSet
    experiment: dict[str, Any]


def read_export(folder: Path) -> ExportInfo:
    """The export's record (``confide.yaml``) and, for a ResNet, a readable ``model.pt``; a missing
    or broken part raises ConfideError naming the file."""
    meta = _read_meta(folder)
    labels = LabelSet(tuple(str(n) for n in meta["labels"]))
    try:
        exp = config_mod.load(None, config_mod.flatten(meta["experiment"]))  # absent fields: defaults
    except ConfideError as exc:
        raise ConfideError(f"{folder / META}: its experiment is not a valid config ({exc})") from None
    if exp.model.name != "bert":
        _read_state(folder / RESNET_WEIGHTS)
    return ExportInfo(model_cfg=exp.model, labels=labels, experiment=meta["experiment"])


def load_model(folder: Path) -> SavedModel:
    """The exported model in ``folder``; a missing, broken or mismatched part raises ConfideError
    naming the file."""
    info = read_export(folder)
    exp = config_mod.load(None, config_mod.flatten(info.experiment))
    labels = info.labels
    if exp.model.name == "bert":
        model = use_pooling(_load_pretrained(folder, exp.model.pooling), exp.model.pooling)
        model_cfg = config_mod.replace(exp, **{"model.checkpoint": str(folder)}).model
    else:
        # model.pt replaces every tensor: the run's starting weights file is not needed (nor read),
        # and the builder's "random init" note would misdescribe the model this returns.
        unset = {"model.weights": ""} | (
            {"model.weights_partial": False} if hasattr(exp.model, "weights_partial") else {}
        )
        exp = config_mod.replace(exp, **unset)
        with _without_random_init_note():
            model = build_model(exp, len(labels))
        _load_state(model, folder / RESNET_WEIGHTS)
        model_cfg = exp.model
    model.eval()
    return SavedModel(model=model, model_cfg=model_cfg, labels=labels, experiment=info.experiment)


def _read_meta(folder: Path) -> dict[str, Any]:
    meta_path = folder / META
    if not folder.is_dir():
        raise ConfideError(
            f"model folder {folder} " + ("is a file; a folder is expected" if folder.exists() else "not found")
        )
    if not meta_path.is_file():
        raise ConfideError(f"not a Confide model folder (no {META}): {folder}")
    try:
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfideError(f"{meta_path} is unreadable ({str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise ConfideError(f"{meta_path} is not a mapping with 'labels' and 'experiment'")
    if not isinstance(meta.get("labels"), list) or not meta["labels"]:
        raise ConfideError(f"{meta_path}: 'labels' must be a non-empty list of label names")
    if not isinstance(meta.get("experiment"), dict):
        raise ConfideError(f"{meta_path}: 'experiment' must be a mapping (the run's config)")
    return meta


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfideError(f"{path} not found: the model folder has no weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise ConfideError(f"{path} is not a readable model weights file ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict):
        raise ConfideError(f"{path} holds a {type(state).__name__}, not a model's state_dict")
    return state


def _load_state(model: nn.Module, path: Path) -> None:
    try:
        model.load_state_dict(_read_state(path))
    except (RuntimeError, TypeError) as exc:
        first = str(exc).splitlines()
        reason = first[1].strip() if len(first) > 1 else first[0]
        raise ConfideError(f"{path} does not fit the model {META} describes ({reason[:200]})") from None


class _DropRandomInit(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "random init" not in record.getMessage()


@contextmanager
def _without_random_init_note() -> Iterator[None]:
    models_log, note = logging.getLogger("common.models"), _DropRandomInit()
    models_log.addFilter(note)
    try:
        yield
    finally:
        models_log.removeFilter(note)


def _load_pretrained(folder: Path, pooling: str) -> nn.Module:
    """The exported sequence classifier, without transformers' load report for the tensors an export
    leaves out on purpose (the [CLS] pooler under mean pooling); any other missing, unexpected or
    resized tensor is still reported (a warning)."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # its load report: _report_loading below says what matters
    transformers.logging.disable_progress_bar()  # a local folder's "Loading weights" bar
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    except Exception as exc:  # transformers raises many types for a damaged folder
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfideError(f"{folder}: not a readable exported text model ({reason})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    _report_loading(folder, info, expected_missing=".pooler." if pooling == "mean" else "")
    return model


def _report_loading(folder: Path, info: dict[str, Any], expected_missing: str = "") -> None:
    """Warn about every tensor the load did not match, but for missing ones whose name contains
    ``expected_missing`` (e.g. '.pooler.': the mean-pooled export has no pooler weights)."""
    kinds = {"missing_keys": "missing", "unexpected_keys": "unexpected", "mismatched_keys": "of another shape"}
    for kind, what in kinds.items():
        keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(kind) or [])
        if kind == "missing_keys" and expected_missing:
            keys = [k for k in keys if expected_missing not in f".{k}"]
        if keys:
            shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
            log.warning("%s: %d tensor(s) %s in the exported model: %s", folder, len(keys), what, shown)


def write_model_card(
    folder: Path,
    exp: ExperimentConfig,
    labels: LabelSet,
    sites: dict[str, dict[str, float]],
    final: dict[str, Any],
    privacy_lines: list[str] | None = None,
    exported: str = "",
    history: list[dict[str, Any]] | None = None,
    baseline: list[str] | None = None,
) -> None:
    """A short human-readable card: what was trained, on what, by whom, how well. ``history``
    (the rounds' records) adds who took part and which sites failed or were refused, and why;
    ``baseline``: the model against the job's simple baseline, in words (server/run.py)."""
    took_part = sorted({n for r in history or [] for n in r.get("sites", {})} | set(sites))
    failures = [(r["round"], f) for r in history or [] for f in r.get("failures", [])]
    lines = [
        f"# Model card: {exp.name}",
        "",
        f"- Model: `{exp.model.name}`"
        + (
            f" from `{exp.model.checkpoint}`, max length {exp.model.max_length}"
            if exp.model.is_text
            else f", {exp.model.in_channels} input channel(s), small-input stem: {exp.model.small_input}"
        ),
        f"- Labels ({len(labels)}): {', '.join(labels.names[:20])}{' ...' if len(labels) > 20 else ''}",
        f"- Data: source `{exp.data.source}`"
        + (f", path `{exp.data.path}`" if exp.data.path else "")
        + f"; partitioner `{exp.data.partitioner}`"
        + (f" (alpha {exp.data.alpha})" if exp.data.partitioner == "dirichlet" else ""),
        f"- Federation: strategy `{exp.strategy.name}`, {exp.strategy.rounds} rounds, {len(took_part)} site(s) "
        f"took part, {len({f['site'] for _, f in failures})} failed or refused at least once, "
        f"{exp.train.local_epochs} local epoch(s), batch {exp.train.batch_size}, "
        f"{exp.train.optimizer} lr {exp.train.lr}",
        "- Only model weights and the scalar metrics listed under Privacy left the sites.",
        *([f"- Exported: {exported}"] if exported else []),
        "",
        "## Privacy (also in privacy.json)",
        "",
        *[f"- {line}" for line in privacy_lines or ["No privacy statement was recorded."]],
        "",
        "## Metrics of the exported model",
        "",
        *_final_metrics(final),
        "",
        "## Against the simple baseline (a linear layer, same sites, same job)",
        "",
        *[f"- {line}" for line in baseline or ["No baseline was reported."]],
    ]
    lines += [
        "",
        "## Per-site held-out metrics (last round)",
        "",
        "| site | accuracy | macro-F1 | records |",
        "|---|---|---|---|",
    ]
    for name, m in sorted(sites.items()):
        lines.append(f"| {name} | {_f(m.get('accuracy'))} | {_f(m.get('macro_f1'))} | {_n(m.get('num_examples'))} |")
    if exp.strategy.personalized:
        lines += _personalisation(exp, sites)
    lines += ["", "## Sites that failed or refused (by round)", ""]
    lines += [f"- round {rnd}: `{f['site']}` in {f['phase']}: {f['reason']}" for rnd, f in failures] or ["- none"]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


def _personalisation(exp: ExperimentConfig, sites: dict[str, dict[str, float]]) -> list[str]:
    """Each site's own model (strategy.personalize, strategy.local_finetune) beside the references it
    must beat, on that site's held-out data, as far as the sites released them."""
    st = exp.strategy
    what = []
    if st.personalize == "head":
        what.append(
            "each site trained and kept its own classification head, which never left it; the coordinator "
            "federated the body only, so the exported model carries the coordinator's untrained initial head "
            "(a site predicts with its own model; `confide score` refuses the export without a site's head, "
            "given with --head)"
        )
    if st.local_finetune:
        what.append(f"each site fine-tuned its model for {st.local_finetune} epoch(s) after the last round and kept it")
    lines = ["", "## Personalisation (each site's own model, on its own held-out data)", "", f"- {'; '.join(what)}."]
    if not any("accuracy" in m for m in sites.values()):
        return [*lines, "- Per-site figures withheld: the sites release no held-out metrics in this job "
                        f"(privacy.site_metrics '{exp.privacy.site_metrics}' or the site policy)."]  # fmt: skip
    lines += [
        "- local-only: the same model trained on the site's records alone for the same epochs (computed only "
        "without DP); global: the federated model before the site's own epochs (with a personal head there is "
        "none: run the job with strategy.personalize off for it).",
        "",
        "| site | local-only accuracy | global accuracy | personalised accuracy |",
        "|---|---|---|---|",
    ]
    for name, m in sorted(sites.items()):
        cells = [_f(m.get(k)) for k in ("local_only_accuracy", "global_accuracy", "accuracy")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def _final_metrics(final: dict[str, Any]) -> list[str]:
    """The exported model's metrics table; a ROC AUC column when a scope has one (two classes)."""
    auc = any("roc_auc" in m for m in final.values())
    lines = [
        "| scope | accuracy | macro-F1 | " + ("ROC AUC | " if auc else "") + "loss | records |",
        "|---|---|---|---|---|" + ("---|" if auc else ""),
    ]
    for scope, m in final.items():
        lines.append(
            f"| {scope} | {_f(m.get('accuracy'))} | {_f(m.get('macro_f1'))} | "
            + (f"{_f(m.get('roc_auc'))} | " if auc else "")
            + f"{_f(m.get('loss'))} | {_n(m.get('num_examples'))} |"
        )
    return lines


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.4f}"


def _n(v: Any) -> str:
    return "withheld" if v is None else str(int(v))
