"""A small preprocessed text task made from BANKING77, for the "never worse than the simple
baseline" check on little data: five intents, 140 training queries of each (700), and those intents'
test queries, every text lower-cased with its punctuation and English stop words removed
(scikit-learn's ``ENGLISH_STOP_WORDS``), the way such sets often reach a project already cleaned.

The files are built at run time from the shared BANKING77 CSVs into a run folder (never committed):

    python -m benchmarks.linear --task banking77-small --features encoder+ngrams
"""

from __future__ import annotations

import csv
import string
from pathlib import Path

import numpy as np

# Five intents with at least 140 training queries each; two of them ("balance not updated after ...")
# differ by a word or two, so the task is not separable by one keyword.
INTENTS = (
    "Refund_not_showing_up",
    "activate_my_card",
    "balance_not_updated_after_bank_transfer",
    "balance_not_updated_after_cheque_or_cash_deposit",
    "beneficiary_not_allowed",
)
PER_INTENT = 140
SEED = 0
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def preprocess(text: str) -> str:
    """Lower-case, punctuation deleted ("don't" -> "dont"), English stop words dropped."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = text.lower().translate(_PUNCTUATION).split()
    return " ".join(w for w in words if w not in ENGLISH_STOP_WORDS)


def _read(path: Path, text_field: str, label_field: str) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {text_field, label_field} - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{path}: no column {sorted(missing)[0]!r}")
        rows = [(preprocess(r[text_field]), r[label_field]) for r in reader if r[label_field] in INTENTS]
    # A query made only of stop words has no text left: left out (an empty field is no record).
    return [(t, label) for t, label in rows if t]


def _write(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "category"])
        writer.writerows(rows)


def build(source: Path, out: Path, text_field: str = "text", label_field: str = "category") -> tuple[Path, Path]:
    """Write ``out``/train.csv (PER_INTENT preprocessed queries of each of INTENTS, drawn with SEED,
    in a seeded random order) and ``out``/test.csv (every test query of INTENTS, preprocessed) from
    BANKING77's ``source``/{train,test}.csv; their paths."""
    rng = np.random.default_rng(SEED)
    train = _read(source / "train.csv", text_field, label_field)
    chosen: list[tuple[str, str]] = []
    for intent in INTENTS:
        rows = [r for r in train if r[1] == intent]
        if len(rows) < PER_INTENT:
            raise SystemExit(f"{source / 'train.csv'}: intent {intent!r} has {len(rows)} queries, {PER_INTENT} needed")
        chosen += [rows[i] for i in sorted(rng.choice(len(rows), PER_INTENT, replace=False))]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "train.csv", chosen)
    _write(out / "test.csv", _read(source / "test.csv", text_field, label_field))
    return out / "train.csv", out / "test.csv"
