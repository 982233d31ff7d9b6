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

The fingerprint names the data, not the job: the file's name and a SHA-256 of its bytes (a
folder: of its files' relative paths and sizes; a path not on this machine: of the path). Two
jobs on the same file share the ledger whatever their output folders; another file is another
data set.
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
    name = _safe(resolved.stem or resolved.name)
    if resolved.is_file():
        stat = resolved.stat()
        return f"{name}-{_file_digest(str(resolved), stat.st_size, stat.st_mtime_ns)[:16]}"
    if resolved.is_dir():  # an image folder: its files' relative paths and sizes (reading every image is slow)
        h = hashlib.sha256()
        for f in sorted(p for p in resolved.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(resolved)}\0{f.stat().st_size}\0".encode())
        return f"{name}-{h.hexdigest()[:16]}"
    # not on this machine (a deployed coordinator names the sites' data format, not their files)
    return f"{name}-path-{hashlib.sha256(str(resolved).encode()).hexdigest()[:16]}"


@functools.lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file's bytes; cached per version of the file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def simulated_ledger(exp: ExperimentConfig, site: str, data_path: str = "", root: Path | None = None) -> Path:
    """A simulated site's ledger (or, with its own ``data_path`` and ``root``, a deployed site's
    without a policy ledger-dir)."""
    return (root or ledger_root(exp)) / data_fingerprint(exp.data, data_path) / f"{_safe(site)}.json"


def central_ledger(exp: ExperimentConfig) -> Path:
    if exp.privacy.central_ledger:
        return resolve_path(exp.privacy.central_ledger)
    return ledger_root(exp) / data_fingerprint(exp.data) / "central.json"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "site"
