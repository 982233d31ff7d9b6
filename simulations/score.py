"""Score a saved Confide model on a labelled file.

    confide-score runs/<run>/model path/to/test.csv
    confide-score runs/<run>/model scans.npz --split test --out predictions.csv

The file is read with the model's recorded data settings (fields, source), which
``--source``, ``--text-field`` and ``--label-field`` can change. Prints accuracy,
macro-F1 and loss as JSON; ``--out`` also writes one predicted label per record.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from common import config as config_mod
from common import logs
from common.batches import make_dataset, make_loader
from common.data import read_test, read_train
from common.errors import ConfideError
from common.export import load_model
from common.metrics import classification_scores
from common.train import predict

SUFFIX_SOURCES = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".npz": "npz"}


def score(
    model_dir: Path,
    data: Path,
    source: str = "",
    text_field: str = "",
    label_field: str = "",
    split: str = "test",
    out: Path | None = None,
) -> dict[str, float]:
    saved = load_model(model_dir)
    recorded = saved.experiment["data"]
    source = source or SUFFIX_SOURCES.get(data.suffix.lower(), "") or ("imagefolder" if data.is_dir() else "")
    if not source:
        raise ConfideError(f"cannot tell the format of {data}; pass --source")
    overrides = {
        "model.name": saved.model_cfg.name,
        "data.source": source,
        "data.path": str(data),
        "data.text_field": text_field or recorded["text_field"],
        "data.label_field": label_field or recorded["label_field"],
        "data.image_size": recorded["image_size"],
        "data.labels": list(saved.labels.names),
    }
    cfg = config_mod.load(None, overrides).data
    records = read_test(cfg) if source == "npz" and split == "test" else read_train(cfg)
    raw = records.with_labels(saved.labels, where=str(data))
    loader = make_loader(make_dataset(raw, saved.model_cfg), 128, shuffle=False)
    y_pred, y_true, loss = predict(saved.model, loader)
    acc, f1 = classification_scores(y_true, y_pred, len(saved.labels))
    if out is not None:
        with out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["record", "label", "predicted"])
            for i, (t, p) in enumerate(zip(y_true, y_pred)):
                writer.writerow([i, saved.labels.names[t], saved.labels.names[p]])
    return {"records": len(y_true), "accuracy": acc, "macro_f1": f1, "loss": loss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a run's model folder (runs/<run>/model)")
    parser.add_argument("data", type=Path, help="labelled file or image folder")
    parser.add_argument("--source", default="", choices=["", *SUFFIX_SOURCES.values(), "imagefolder"])
    parser.add_argument("--text-field", default="")
    parser.add_argument("--label-field", default="")
    parser.add_argument("--split", default="test", choices=["train", "test"], help="npz split to score")
    parser.add_argument("--out", type=Path, default=None, help="write per-record predictions (CSV)")
    args = parser.parse_args(argv)
    logs.setup()
    try:
        result = score(args.model, args.data, args.source, args.text_field, args.label_field, args.split, args.out)
    except ConfideError as exc:
        print(f"confide-score: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
