"""Files replaced whole or not at all: the one way Confide writes a file a rerun or resume trusts
(a checkpoint, a privacy ledger, metrics, a study cell's result, a feature cache entry).

The content goes to a temp file beside the target (same file system, so the rename is atomic),
is flushed and fsynced, then renamed over the target, and the folder fsynced. A writer killed midway leaves the old file
and at most a temp file named ``.<target name>.<random>.tmp``; ``stale_temps`` finds those.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

SUFFIX = ".tmp"


def _prefix(path: Path) -> str:
    return f".{path.name}."


@contextlib.contextmanager
def replacing(path: Path, mode: int | None = None) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into; on leaving the block without an error it
    replaces ``path`` (with permission bits ``mode`` when given), else it is removed."""
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)  # the rename itself survives a power loss


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    with replacing(path, mode) as fh:
        fh.write(text.encode("utf-8"))


def stale_temps(path: Path) -> list[Path]:
    """Temp files of ``path`` left by writers killed mid-write (mkstemp's random part has no dot)."""
    prefix = _prefix(path)
    out = []
    for name in os.listdir(path.parent):
        middle = name[len(prefix) : -len(SUFFIX)]
        if name.startswith(prefix) and name.endswith(SUFFIX) and middle and "." not in middle:
            out.append(path.parent / name)
    return out
