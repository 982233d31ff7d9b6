"""A generated (not real) bank-query text set for the offline BERT default.

Sentences are assembled from templates: each intent has its own key phrases, mixed
with shared filler and a share of phrases borrowed from other intents, so the task is
learnable but not trivial. It exists only so the default BERT job runs with no files;
real studies use real data (e.g. banking77 in ../shared/datasets).
"""

from __future__ import annotations

import functools

import numpy as np

INTENTS: dict[str, tuple[str, ...]] = {
    "card_lost": ("lost my card", "card was stolen", "cannot find my card", "freeze my card"),
    "transfer": ("send money", "transfer funds", "wire to my friend", "pay my landlord"),
    "balance": ("check my balance", "how much money", "account balance", "funds available"),
    "fraud": ("charge I did not make", "suspicious payment", "unknown transaction", "scam"),
    "exchange": ("exchange rate", "convert to euros", "foreign currency", "currency fee"),
    "pin": ("change my pin", "forgot my pin", "pin is blocked", "reset the pin"),
}
OPENERS = ("hi", "hello", "please help", "hey there", "good morning", "quick question")
FILLER = (
    "today",
    "as soon as possible",
    "on the app",
    "with my account",
    "right now",
    "again",
    "for my trip",
    "this week",
    "in the branch",
    "online",
)
TEMPLATES = (
    "{o}, I need to {k} {f}",
    "{o} can you {k} {f}?",
    "{k} {f}",
    "{o}, why can't I {k} {f}",
    "I want to {k}, {f}",
)
SIZES = {"train": 1200, "test": 300}
SEEDS = {"train": 7, "test": 8}
BORROW = 0.15  # share of sentences that also carry another intent's phrase


@functools.lru_cache(maxsize=2)
def synthetic_text(split: str) -> tuple[list[str], list[str]]:
    """(texts, labels) for 'train' or 'test'; deterministic."""
    rng = np.random.default_rng(SEEDS[split])
    names = list(INTENTS)
    texts, labels = [], []
    for _ in range(SIZES[split]):
        label = names[rng.integers(len(names))]
        phrase = INTENTS[label][rng.integers(len(INTENTS[label]))]
        filler = FILLER[rng.integers(len(FILLER))]
        if rng.random() < BORROW:
            other = names[rng.integers(len(names))]
            filler = f"{filler} and {INTENTS[other][rng.integers(len(INTENTS[other]))]}"
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        texts.append(template.format(o=OPENERS[rng.integers(len(OPENERS))], k=phrase, f=filler))
        labels.append(label)
    return texts, labels
