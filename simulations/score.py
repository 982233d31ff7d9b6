"""Score a saved Confide model on a labelled file.

    confide-score runs/<run>/model path/to/test.csv --id-field case_id --out predictions.csv
    confide-score runs/<run>/model scans.npz --split test --out predictions.csv

The file is read with the model's recorded data settings (fields, source), which
``--source``, ``--text-field`` and ``--label-field`` can change. Prints accuracy,
macro-F1, loss and, for two labels, ROC AUC (the second label's probability as the score)
as JSON. ``--out`` also writes one CSV row per record: ``id`` (the ``--id-field`` column of a
table file, else the record's 0-based row number in the file), ``text`` (text data, unless
``--no-text``), ``label`` (true), ``predicted`` and one ``p_<label>`` probability per class.

Before anything is predicted the data must fit the model (simulations/score_checks.py): images of
the channel count and size it was trained on (``--resize`` scales them to that size), 8-bit
pixels unless ``--pixel-max`` (else the model's ``data.pixel_max``) says what white is, and only
labels the model knows. A bad argument or file stops with one ``confide: ...`` line, exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common import cli, logs
from common import config as config_mod
from common.batches import make_dataset, make_loader
from common.config import DataConfig
from common.data import TABLE_SOURCES, LabelSet, read_column, read_test, read_train
from common.errors import ConfideError, DataError
from common.export import ExportInfo, load_model, read_export
from common.metrics import binary_roc_auc, classification_scores
from common.train import classes, predict_logits, probabilities
from simulations.score_checks import check_images, check_labels, expected_side

SUFFIX_SOURCES = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".npz": "npz"}
SOURCES = ", ".join([*SUFFIX_SOURCES.values(), "imagefolder"])


def score(
    model_dir: Path,
    data: Path,
    source: str = "",
    text_field: str = "",
    label_field: str = "",
    split: str | None = None,
    out: Path | None = None,
    id_field: str = "",
    with_text: bool = True,
    resize: bool = False,
    pixel_max: float | None = None,
    head: Path | None = None,
) -> dict[str, float]:
    """Score the export in ``model_dir`` on a labelled file. ``head``: a site's own classification
    head, for the export of a job with ``strategy.personalize: head`` (whose head is untrained)."""
    info = read_export(model_dir)
    check_head(info, model_dir, head)
    cfg = data_config(info, data, source, text_field, label_field, resize, pixel_max)
    check_fits(cfg, data, split, id_field, text_field, label_field)
    try:
        records = read_test(cfg) if cfg.source == "npz" and split in (None, "test") else read_train(cfg)
    except DataError as exc:
        raise DataError(in_cli_terms(str(exc))) from None
    check_images(records, info, data)
    check_labels(records, info.labels, data, labels_at(cfg, split))
    raw = records.with_labels(info.labels, where=str(data))
    ids = record_ids(cfg, id_field, len(raw))  # checked before the model is built
    saved = load_model(model_dir)
    if head is not None:
        from common.personalize import restore_head

        restore_head(saved.model, head)
    loader = make_loader(make_dataset(raw, saved.model_cfg), 128, shuffle=False)
    y_logits, y_true, loss = predict_logits(saved.model, loader)
    y_pred, y_prob = classes(y_logits), probabilities(y_logits)
    acc, f1 = classification_scores(y_true, y_pred, len(saved.labels))
    result: dict[str, float] = {"records": len(y_true), "accuracy": acc, "macro_f1": f1, "loss": loss}
    auc = binary_roc_auc(y_true, y_prob) if len(saved.labels) == 2 else None
    if auc is not None:
        result["roc_auc"] = auc
    if out is not None:
        texts = raw.texts if with_text else None
        write_predictions(out, saved.labels, ids, texts, y_true, y_pred, y_prob)
    return result


def check_head(info: ExportInfo, model_dir: Path, head: Path | None) -> None:
    """A personalised job's export carries the coordinator's head, which no site trained: scoring it
    alone would report a random classifier's accuracy as the model's. It needs a site's own head."""
    personal = (info.experiment.get("strategy") or {}).get("personalize", "off") == "head"
    if personal and head is None:
        raise ConfideError(
            f"{model_dir} is the federated body of a job with strategy.personalize 'head': its classification "
            "head was never trained (each site predicts with its own); pass --head with a site's "
            "job-<job>.head.pt (in the '<site>.personal' folder beside its privacy ledger)"
        )
    if head is not None and not personal:
        raise ConfideError(f"--head {head}: {model_dir} is not the export of a personalised job (its head is trained)")
    if head is not None and not head.is_file():
        raise ConfideError(f"--head {head}: file not found")


def source_of(data: Path, source: str) -> str:
    source = source or SUFFIX_SOURCES.get(data.suffix.lower(), "") or ("imagefolder" if data.is_dir() else "")
    if not source:
        raise ConfideError(f"cannot tell the format of {data} from its name; pass --source (one of: {SOURCES})")
    return source


def data_config(
    info: ExportInfo,
    data: Path,
    source: str,
    text_field: str,
    label_field: str,
    resize: bool = False,
    pixel_max: float | None = None,
) -> DataConfig:
    """How to read ``data``: the model's recorded data settings, changed by the given ones."""
    recorded = info.experiment.get("data") or {}
    source = source_of(data, source)
    is_table = source in TABLE_SOURCES
    if info.model_cfg.is_text and not is_table:
        raise ConfideError(f"{data} is image data ({source}), but the model reads text (csv, json, jsonl, parquet)")
    if not info.model_cfg.is_text and is_table:
        raise ConfideError(f"{data} is a {source} table, but the model reads images (npz or an image folder)")
    image_size = recorded.get("image_size", 0)
    if resize:
        image_size = expected_side(info)
        if image_size is None:
            raise ConfideError(f"--resize: the model does not record the image size it was trained on "
                               f"(data.source {recorded.get('source')!r}, no data.image_size)")  # fmt: skip
    overrides = {
        "model.name": info.model_cfg.name,
        "data.source": source,
        "data.path": str(data),
        "data.text_field": text_field or recorded.get("text_field", "text"),
        "data.label_field": label_field or recorded.get("label_field", "label"),
        "data.image_size": image_size,
        "data.pixel_max": recorded.get("pixel_max", 0.0) if pixel_max is None else pixel_max,
        "data.labels": list(info.labels.names),
    }
    try:
        return config_mod.load(None, overrides).data
    except ConfideError as exc:
        if "data.pixel_max" in str(exc):
            raise ConfideError(f"--pixel-max {pixel_max:g} is out of range: pixel max >= 0 (0: 8-bit images)") from None
        raise ConfideError(f"{data} with the model's settings: {exc}") from None


def check_fits(
    cfg: DataConfig, data: Path, split: str | None, id_field: str, text_field: str, label_field: str
) -> None:
    """The options against the data's kind, before the file is read."""
    is_table = cfg.source in TABLE_SOURCES
    if id_field and not is_table:
        raise ConfideError(f"--id-field '{id_field}': only table files ({', '.join(TABLE_SOURCES)}) have columns")
    if text_field and not is_table:
        raise ConfideError(f"--text-field '{text_field}': {data} holds images, not text")
    if label_field and not is_table:
        raise ConfideError(
            f"--label-field '{label_field}': only table files have label columns; {data} is {cfg.source}"
        )
    if split is not None and cfg.source != "npz":
        raise ConfideError(f"--split {split}: only .npz files have splits; {data} is {cfg.source}")


def labels_at(cfg: DataConfig, split: str | None) -> str:
    """Where a data file keeps its labels, as a refusal names it."""
    if cfg.source in TABLE_SOURCES:
        return f"column '{cfg.label_field}'"
    if cfg.source == "npz":
        return f"array '{split or 'test'}_labels'"
    return "subfolder names"


def in_cli_terms(message: str) -> str:
    """A reader's message in the scorer's own terms: the options, not the experiment's config keys."""
    return (
        message.replace("(config key 'data.text_field')", "(--text-field; default: the model's text field)")
        .replace("(config key 'data.label_field')", "(--label-field; default: the model's label field)")
        .replace(" (config key 'data.path')", "")
        .replace("set data.pixel_max to", "pass --pixel-max with")
        .replace("above data.pixel_max=", "above the pixel maximum (--pixel-max, else the model's data.pixel_max) ")
    )


def record_ids(cfg: DataConfig, id_field: str, n: int) -> list[str]:
    """Each record's id: the ``id_field`` column of a table file, else its 0-based row number."""
    if not id_field:
        return [str(i) for i in range(n)]
    ids = read_column(cfg, id_field)
    if len(ids) != n:  # the same file read twice: only a file changed in between differs
        raise ConfideError(f"{cfg.path}: column '{id_field}' has {len(ids)} values for {n} records")
    return ids


def write_predictions(
    out: Path,
    labels: LabelSet,
    ids: Sequence[str],
    texts: Sequence[str] | None,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    y_prob: np.ndarray,
) -> None:
    """One CSV row per record: id, text (when given), true and predicted label, p_<label> per class."""
    names = labels.names
    text_column = ["text"] if texts is not None else []
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", *text_column, "label", "predicted", *(f"p_{n}" for n in names)])
        for i, (t, p) in enumerate(zip(y_true, y_pred)):
            text = [texts[i]] if texts is not None else []
            writer.writerow([ids[i], *text, names[t], names[p], *(f"{v:.8g}" for v in y_prob[i])])


def check_out(out: Path | None, data: Path) -> None:
    if out is None:
        return
    cli.new_file(out, "--out")
    if not os.access(out.parent, os.W_OK):
        raise ConfideError(f"--out {out}: folder {out.parent} is not writable")
    if out.resolve() == data.resolve():
        raise ConfideError(f"--out {out} is the data file being scored; give another file name")


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(
        prog=cli.prog("confide-score"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="a run's model folder (runs/<run>/model)")
    parser.add_argument("data", type=Path, help="labelled file or image folder")
    parser.add_argument("--source", default="", choices=["", *SUFFIX_SOURCES.values(), "imagefolder"])
    parser.add_argument("--text-field", default="")
    parser.add_argument("--label-field", default="")
    parser.add_argument("--split", default=None, choices=["train", "test"], help="npz split to score (test)")
    parser.add_argument("--out", type=Path, default=None, help="write per-record predictions (CSV)")
    parser.add_argument("--id-field", default="", help="column of a table file to write as each record's id")
    parser.add_argument("--no-text", action="store_true", help="leave the text out of the --out CSV")
    parser.add_argument(
        "--resize", action="store_true", help="scale images to the size the model was trained on (else refused)"
    )
    parser.add_argument(
        "--pixel-max",
        type=float,
        default=None,
        help="the pixel value of white in the data (1 for [0, 1] floats, 4095 for 12-bit; default: the model's "
        "data.pixel_max, 0 meaning 8-bit)",
    )
    parser.add_argument(
        "--head", type=Path, default=None, help="a site's own head for a personalised job's export (job-<job>.head.pt)"
    )
    try:
        args = parser.parse_args(argv)
        cli.existing_folder(args.model, "model folder")
        if not args.data.is_dir():
            cli.existing_file(args.data, "data file")
        check_out(args.out, args.data)
        logs.setup()
        result = score(
            args.model,
            args.data,
            args.source,
            args.text_field,
            args.label_field,
            args.split,
            args.out,
            id_field=args.id_field,
            with_text=not args.no_text,
            resize=args.resize,
            pixel_max=args.pixel_max,
            head=args.head,
        )
    except ConfideError as exc:
        return cli.refuse(exc)
    except OSError as exc:  # --out was checked; a write failing now (disk full, no permission) failed the run
        print(f"confide: could not write --out {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return cli.FAILED
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
