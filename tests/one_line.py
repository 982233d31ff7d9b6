"""The harness of the tests/test_battery_<entry>.py modules: one bad input per case, run through an
entry point's ``main(argv)`` in-process, and the refusal contract every ``confide`` subcommand keeps:

(a) exit code 2 (bad input, not a crash and not a failed run),
(b) exactly one line starting ``confide: ``, the last one on stderr, containing every expected
    fragment (the argument or file that is wrong, what is wrong, the valid range where there is one),
(c) no Python traceback anywhere in the output, and
(d) no work started: nothing on stdout (every argument and file is checked before any output).

A case's files are written under the test's own folder, which is also the working folder; ``{tmp}``
in an argument or an expected fragment stands for that folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

Writer = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]  # fragments the one line must contain ({tmp}: the test folder)
    files: dict[str, object] = field(default_factory=dict)  # name -> text, bytes or writer(path)


def directory(path: Path) -> None:
    path.mkdir()


def write_files(root: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(str(content))


def params(cases: Sequence[Case]) -> list:
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)
    return [pytest.param(c, id=c.id) for c in cases]


def refused(
    main: Callable[[list[str]], int],
    case: Case,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    **places: object,
) -> str:
    """Run ``case`` and assert the refusal contract (module docstring); returns the one line.
    ``places`` fill other ``{name}`` fields of the arguments (e.g. a model folder a fixture made)."""
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, case.files)
    argv = [a.format(tmp=tmp_path, **places) for a in case.argv]
    for name in ("", "common", "client", "simulations"):  # handlers on this test's captured stderr
        monkeypatch.setattr(logging.getLogger(name or None), "handlers", [logging.StreamHandler()])
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"{case.id}: exit code {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("confide: "), err
    assert sum(line.startswith("confide: ") for line in lines) == 1, err
    assert len(lines) == 1, f"{case.id}: more than the one line on stderr:\n{err}"
    assert out == "", f"{case.id}: work started before the refusal:\n{out}"
    message = lines[-1]
    for fragment in case.expect:
        assert fragment.format(tmp=tmp_path) in message, f"{fragment!r} not in: {message}"
    return message
