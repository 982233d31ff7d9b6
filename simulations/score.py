"""Score a saved Confide model on a labelled file.

    confide-score runs/<run>/model path/to/test.csv --id-field case_id --out predictions.csv
    confide-score runs/<run>/model scans.npz --split test --out predictions.csv

The file is read with the model's recorded data settings (fields, source), which
``--source``, ``--text-field`` and ``--label-field`` can change. Prints accuracy,
macro-F1, loss and, for two labels, ROC AUC (the second label's probability as the score)
as JSON. ``--out`` also writes one CSV row per record: ``id`` (the ``--id-field`` column of a
table file, else the record's 0-based row number in the file), ``text`` (text data, unless
``--no-text``), ``label`` (true), ``predicted`` and one ``p_<label>`` probability per class.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common import config as config_mod
from common import logs
from common.batches import make_dataset, make_loader
from common.config import DataConfig
from common.data import LabelSet, read_column, read_test, read_train
from common.errors import ConfideError
from common.export import SavedModel, load_model
from common.metrics import binary_roc_auc, classification_scores
from common.train import classes, predict_logits, probabilities

SUFFIX_SOURCES = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".npz": "npz"}


def score(
    model_dir: Path,
    data: Path,
    source: str = "",
    text_field: str = "",
    label_field: str = "",
    split: str = "test",
    out: Path | None = None,
    id_field: str = "",
    with_text: bool = True,
) -> dict[str, float]:
    saved = load_model(model_dir)
    cfg = data_config(saved, data, source, text_field, label_field)
    records = read_test(cfg) if cfg.source == "npz" and split == "test" else read_train(cfg)
    raw = records.with_labels(saved.labels, where=str(data))
    ids = record_ids(cfg, id_field, len(raw))  # checked before the model runs
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


def data_config(saved: SavedModel, data: Path, source: str, text_field: str, label_field: str) -> DataConfig:
    """How to read ``data``: the model's recorded data settings, changed by the given ones."""
    recorded = saved.experiment["data"]
    source = source or SUFFIX_SOURCES.get(data.suffix.lower(), "") or ("imagefolder" if data.is_dir() else "")
    if not source:
        raise ConfideError(f"cannot tell the format of {data}; pass --source")
    overrides = {
        "model.name": saved.model_cfg.name,
        "data.source": source,
        "data.path": str(data),
        "data.text_field": text_field or recorded.get("text_field", "text"),
        "data.label_field": label_field or recorded.get("label_field", "label"),
        "data.image_size": recorded.get("image_size", 0),
        "data.labels": list(saved.labels.names),
    }
    return config_mod.load(None, overrides).data


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a run's model folder (runs/<run>/model)")
    parser.add_argument("data", type=Path, help="labelled file or image folder")
    parser.add_argument("--source", default="", choices=["", *SUFFIX_SOURCES.values(), "imagefolder"])
    parser.add_argument("--text-field", default="")
    parser.add_argument("--label-field", default="")
    parser.add_argument("--split", default="test", choices=["train", "test"], help="npz split to score")
    parser.add_argument("--out", type=Path, default=None, help="write per-record predictions (CSV)")
    parser.add_argument("--id-field", default="", help="column of a table file to write as each record's id")
    parser.add_argument("--no-text", action="store_true", help="leave the text out of the --out CSV")
    args = parser.parse_args(argv)
    logs.setup()
    try:
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
        )
    except ConfideError as exc:
        print(f"confide-score: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
