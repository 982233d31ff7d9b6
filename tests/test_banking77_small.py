"""The small cleaned BANKING77 task (benchmarks/banking77_small.py): how a query is cleaned, and which
records the built files hold, checked on tiny hand-made CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import banking77_small as small

pytestmark = pytest.mark.unit


def test_preprocess_lowercases_and_drops_punctuation_and_stop_words() -> None:
    """'Why don't I have MY card, yet?': lower-cased, punctuation deleted ("don't" -> "dont"), and
    'why', 'i', 'have', 'my', 'yet' are scikit-learn English stop words; 'dont' and 'card' are not."""
    assert small.preprocess("Why don't I have MY card, yet?") == "dont card"
    assert small.preprocess("Is it?") == ""


def _csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "category"), *rows])


def _read(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def test_build_keeps_the_five_intents_a_fixed_number_each(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two queries per intent (PER_INTENT patched to 2) out of three, no other intent, no query left
    empty by the cleaning; the test file holds every cleaned test query of the five intents only, and
    the same inputs build the same files."""
    monkeypatch.setattr(small, "PER_INTENT", 2)
    src = tmp_path / "src"
    src.mkdir()
    train = [
        (f"Query {k} about {i}!", intent) for i, intent in enumerate(small.INTENTS) for k in ("one", "two", "three")
    ]
    _csv(src / "train.csv", [*train, ("The card arrived", "card_arrival"), ("Why is it?", small.INTENTS[0])])
    _csv(
        src / "test.csv",
        [
            ("My TOP-UP failed", "top_up_failed"),
            ("Where is the refund?", small.INTENTS[0]),
            ("It is.", small.INTENTS[1]),
        ],
    )
    a, b = small.build(src, tmp_path / "out")
    rows = _read(a)
    assert len(rows) == 10
    assert sorted({c for _, c in rows}) == sorted(small.INTENTS)
    assert all(sum(c == intent for _, c in rows) == 2 for intent in small.INTENTS)
    assert all(t.startswith("query ") and "!" not in t for t, _ in rows)
    assert _read(b) == [("refund", small.INTENTS[0])]
    assert small.build(src, tmp_path / "again")[0].read_text() == a.read_text()
