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


# --------------------------------------------------------------------------- generated images

# A generated (not real) 8x8 grayscale image set with 10 classes, large enough to split into
# thousands of simulated sites (scale benchmarks; common/data.py's 'synthetic_images' source).
# Each class is a fixed random stroke pattern; a record is its class pattern shifted by up to one
# pixel, plus Gaussian noise: learnable, not trivial. Deterministic; the two splits share classes.
IMAGE_SIZES = {"train": 50_000, "test": 2_000}
IMAGE_SEEDS = {"train": 11, "test": 12}
IMAGE_CLASSES = 10
IMAGE_SIDE = 8
IMAGE_NOISE = 0.35
_PATTERN_SEED = 10


@functools.lru_cache(maxsize=2)
def synthetic_images(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 1, 8, 8), int64 class indices (N,)) for 'train' or 'test'; deterministic."""
    side = IMAGE_SIDE
    patterns = (np.random.default_rng(_PATTERN_SEED).random((IMAGE_CLASSES, side, side)) < 0.35).astype(np.float32)
    rng = np.random.default_rng(IMAGE_SEEDS[split])
    n = IMAGE_SIZES[split]
    labels = rng.integers(IMAGE_CLASSES, size=n)
    shifts = rng.integers(-1, 2, size=(n, 2))
    images = patterns[labels]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            rows = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            images[rows] = np.roll(images[rows], (dy, dx), axis=(1, 2))
    images += rng.normal(0.0, IMAGE_NOISE, size=images.shape).astype(np.float32)
    pixels = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)[:, None]
    return pixels, labels.astype(np.int64)
