"""Logging for Confide's own modules, kept apart from Flower's handlers (no double lines)."""

from __future__ import annotations

import logging

PACKAGES = ("common", "server", "client", "simulations", "benchmarks")


def setup(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[confide] %(levelname)s %(name)s: %(message)s"))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if not any(getattr(h, "_confide", False) for h in logger.handlers):
            handler._confide = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
