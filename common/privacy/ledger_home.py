"""Where a party's privacy ledger lives: with the party, never with a run.

A ledger must outlive every run folder, resume, rerun and sweep cell that spends the same data's
budget, or the printed epsilon restarts. So:
- a deployed site keeps it in its own policy's ``ledger-dir`` (the job cannot move it);
- a simulated site (and a deployed one whose lenient policy names no folder) keeps it under the
  Confide state folder, one sub-folder per data set: ``<root>/<data fingerprint>/<site>.json``,
  with ``<root>`` = ``privacy.ledger_dir`` (simulation only), else ``$CONFIDE_STATE_DIR/ledgers``,
  else ``$XDG_STATE_HOME/confide/ledgers`` (``~/.local/state/confide/ledgers``);
- the coordinator's central ledger is ``privacy.central_ledger``, else ``central.json`` in the
  same data set's folder.

The fingerprint names the data, not the job: the source and a SHA-256 of the file's bytes (a
folder: of its files' relative paths and bytes). Two jobs on the same file share the ledger
whatever their output folders; a different file is a different data set.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from common.config import BUILTIN_SOURCES, DataConfig, ExperimentConfig, resolve_path

STATE_ENV = "CONFIDE_STATE_DIR"


def state_dir() -> Path:
    """Confide's state folder on this machine (ledgers of simulated parties live under it)."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser().resolve()
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg).expanduser().resolve() / "confide"


def ledger_root(exp: ExperimentConfig) -> Path:
    """The folder holding one sub-folder per data set (``privacy.ledger_dir`` or the state folder's)."""
    return resolve_path(exp.privacy.ledger_dir) if exp.privacy.ledger_dir else state_dir() / "ledgers"


def data_fingerprint(data: DataConfig, path: str = "") -> str:
    """``<name>-<sha256 prefix>`` of the training data (``path``: a site's own file)."""
    where = path or data.path
    if not where and data.source in BUILTIN_SOURCES:
        return f"builtin-{data.source}"
    resolved = resolve_path(where)
    stat = resolved.stat()
    digest = _digest(str(resolved), stat.st_size, stat.st_mtime_ns)
    return f"{_safe(resolved.stem or resolved.name)}-{digest[:16]}"


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file's bytes or a folder's (relative path, bytes) pairs; cached per version."""
    h = hashlib.sha256()
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for f in files:
        if root.is_dir():
            h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def simulated_ledger(exp: ExperimentConfig, site: str, data_path: str = "") -> Path:
    """A simulated site's ledger (or a deployed site's without a policy ledger-dir, from its file)."""
    return ledger_root(exp) / data_fingerprint(exp.data, data_path) / f"{_safe(site)}.json"


def central_ledger(exp: ExperimentConfig) -> Path:
    if exp.privacy.central_ledger:
        return resolve_path(exp.privacy.central_ledger)
    return ledger_root(exp) / data_fingerprint(exp.data) / "central.json"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "site"
