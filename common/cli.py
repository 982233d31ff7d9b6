"""How every ``confide`` entry point refuses bad input: one line, ``confide: ...``, exit code 2.

``Parser`` is an ``argparse.ArgumentParser`` whose usage errors (an unknown flag, a missing or
ill-typed argument) raise ``ConfideError`` instead of printing usage and exiting, so an entry point's
``main`` turns them into the same one line as every other refusal (``refuse``). Exit codes:
2 bad input, 1 a run or check that failed, 0 success.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from common.errors import ConfideError

BAD_INPUT = 2
FAILED = 1


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise ConfideError naming the argument (``--help`` still works)."""

    def error(self, message: str) -> NoReturn:
        raise ConfideError(f"{message} ({self.prog} --help)")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` overrides by key, each value read as YAML (``0.01``, ``[a, b]``, ``off``)."""
    import yaml

    from common.yamlfile import loads, yaml_reason

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfideError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = loads(value)
        except yaml.YAMLError as exc:
            raise ConfideError(f"--set {key.strip()}: {value!r} is not a YAML value: {yaml_reason(exc)}") from None
    return out


def refuse(exc: BaseException | str) -> int:
    """Print the one line for a refused input and return the exit code for it."""
    print(f"confide: {exc}", file=sys.stderr)
    return BAD_INPUT


def prog(default: str) -> str:
    """``confide <subcommand>`` when called through the ``confide`` command, else ``default``."""
    return sys.argv[0] if sys.argv[0].startswith("confide ") else default


def existing_file(path: Path, what: str) -> Path:
    """``path`` when it is a readable, non-empty-named file; else ConfideError naming ``what``."""
    if path.is_dir():
        raise ConfideError(f"{what} {path} is a folder; a file is expected")
    if not path.exists():
        raise ConfideError(f"{what} not found: {path}")
    if not path.is_file():
        raise ConfideError(f"{what} {path} is not a regular file")
    return path


def existing_folder(path: Path, what: str) -> Path:
    if path.is_file():
        raise ConfideError(f"{what} {path} is a file; a folder is expected")
    if not path.is_dir():
        raise ConfideError(f"{what} not found: {path}")
    return path


def new_file(path: Path, what: str) -> Path:
    """A file to be written: its folder must exist and it must not be a folder itself."""
    if path.is_dir():
        raise ConfideError(f"{what} {path} is an existing folder; give a file name")
    if not path.parent.is_dir():
        raise ConfideError(f"{what} {path}: folder {path.parent} does not exist")
    return path


def require(ok: bool, message: str) -> None:
    """Refuse with ``message`` (which names the argument and its valid range) unless ``ok``."""
    if not ok:
        raise ConfideError(message)


def finite(value: float) -> bool:
    return math.isfinite(value)
