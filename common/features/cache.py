"""A site-local disk cache of computed features (the slow ones: scattering, encoder embeddings).

Keyed by a hash of the inputs (the records themselves and the feature's parameters), so a cached
entry is used only for exactly the records it was computed from. The folder is on the site's own
disk: ``$CONFIDE_FEATURE_CACHE``, else ``~/.cache/confide/features``; "off" disables it. Features
never leave the site; a cache that cannot be written is skipped (logged), never an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import atomic

log = logging.getLogger(__name__)


def folder() -> Path | None:
    where = os.environ.get("CONFIDE_FEATURE_CACHE", "")
    if where.lower() == "off":
        return None
    return Path(where) if where else Path.home() / ".cache" / "confide" / "features"


def key(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.dtype, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, list):
            for item in part:
                h.update(str(item).encode() + b"\0")
        else:
            h.update(repr(part).encode())
        h.update(b"\1")
    return h.hexdigest()


def load_or(name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The cached tensor under ``name``, else ``compute()`` (then stored)."""
    base = folder()
    path = base / f"{name}.pt" if base else None
    if path is not None and path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged entry: recompute it
            log.warning("feature cache %s unreadable (%s); recomputing", path, exc)
    value = compute()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic.replacing(path) as fh:
                torch.save(value, fh)
        except OSError as exc:
            log.info("feature cache %s not written (%s)", path, exc)
    return value
