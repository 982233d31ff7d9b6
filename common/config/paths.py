"""Where relative paths in a config point."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """Base for relative paths in configs: $CONFIDE_ROOT, else the working directory.

    ``flwr run .`` from the project folder starts the local SuperLink there, so relative
    paths such as ``../shared/datasets/...`` resolve against the project folder.
    """
    return Path(os.environ.get("CONFIDE_ROOT") or Path.cwd())


def resolve_path(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (project_root() / p).resolve()
