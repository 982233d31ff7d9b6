"""The privacy accountants' own warnings, folded into one plain line.

Opacus warns when the best Renyi order is at the edge of its range ("Optimal order is the largest
alpha ..."), its PRV accountant warns about its numerical grid, and Google's ``dp_accounting`` logs
one ``_compute_log_a_frac failed to converge`` line per fractional order it drops: dozens of lines
for one ledger, each saying that a reported epsilon is a looser (still valid) upper bound.
``quiet_accountants`` collects them instead of printing them; ``folded_note`` says it in one line.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

# Loggers the accountants write their notes to (absl's logging goes through the 'absl' logger).
LOGGERS = ("absl", "opacus", "prv_accountant")


class _Collect(logging.Handler):
    def __init__(self, into: Counter[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into[_kind(record.getMessage())] += 1


# Notes that only make a bound looser: an RDP bound holds at every order, so dropping orders or
# searching too few of them gives a larger epsilon, never a smaller one.
LOOSER = {
    "failed to converge": "dp_accounting left out Renyi orders that did not converge",
    "Optimal order": "Opacus's best Renyi order is at the edge of the orders it tries",
}


def _kind(message: str) -> str:
    """A short, plain name for one accountant note."""
    for marker, kind in LOOSER.items():
        if marker in message:
            return kind
    return message.splitlines()[0][:120] if message.strip() else "a warning without text"


@contextmanager
def quiet_accountants() -> Iterator[Counter[str]]:
    """Collect the accountants' warnings and log lines (kind -> count) while the block runs."""
    folded: Counter[str] = Counter()
    handler = _Collect(folded)
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers, logger.propagate))
        logger.handlers, logger.propagate = [handler], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield folded
            for w in caught:
                folded[_kind(str(w.message))] += 1
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


def folded_note(folded: Counter[str]) -> str:
    """One line for every collected note, saying which only loosen the bound."""
    looser = [f"{kind} ({n}x)" for kind, n in sorted(folded.items()) if kind in LOOSER.values()]
    other = [f"{kind} ({n}x)" for kind, n in sorted(folded.items()) if kind not in LOOSER.values()]
    parts = []
    if looser:
        parts.append(f"{'; '.join(looser)}: the epsilon above is a looser upper bound, still valid")
    if other:
        parts.append(f"other accountant warnings: {'; '.join(other)}")
    return "note: " + " | ".join(parts)
