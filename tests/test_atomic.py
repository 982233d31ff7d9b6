"""common/atomic.py: a file is replaced whole or left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import atomic

pytestmark = pytest.mark.unit


def test_replaces_the_file_with_the_new_content_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "ledger.json"
    target.write_text("old")
    atomic.write_text(target, "new", mode=0o600)
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]  # no temp file left


def test_a_writer_failing_midway_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.replacing(target) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_stale_temps_finds_only_this_files_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    for name in (".a.json.x1y2.tmp", ".a.json.tmp", ".a.json.x.y.tmp", ".b.json.x1y2.tmp", "a.json"):
        (tmp_path / name).write_text("")
    assert [p.name for p in atomic.stale_temps(target)] == [".a.json.x1y2.tmp"]
