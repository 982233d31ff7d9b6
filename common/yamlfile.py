"""Reading a user's YAML file (an experiment, a sweep) strictly: one clear line for each way it can
be wrong, never a traceback and never a silent choice.

PyYAML keeps the last of two equal keys in a mapping, so a file with ``rounds: 1000`` written twice
would run whichever came last; here a repeated key is refused with both line numbers. An empty or
comment-only file is refused too (it would otherwise run the default job).

Only ``true`` and ``false`` are booleans, as in YAML 1.2. PyYAML follows YAML 1.1, where ``off``,
``on``, ``yes`` and ``no`` are booleans too: ``baseline.features: off`` or ``--set privacy.mode=off``
would reach the config as ``False`` and be refused as "not a string".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from common.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.get(key)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    break
                if seen is not None:
                    raise ConstructorError(
                        None,
                        None,
                        f"key '{key}' appears twice (first at line {seen.start_mark.line + 1}); "
                        "keep one: YAML would silently use the last",
                        key_node.start_mark,
                    )
                first[key] = key_node
        return super().construct_mapping(node, deep=deep)


_BOOL_TAG = "tag:yaml.org,2002:bool"
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def loads(text: str) -> Any:
    """Parse YAML text, refusing repeated keys (raises yaml.YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds; ``what`` names the file's role in messages ("experiment file")."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; a YAML file is expected")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    try:
        raw = loads(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {yaml_reason(exc)}") from None
    if raw is None:
        raise ConfigError(f"{what} {path} is empty (or only comments); write the keys it should set")
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at top level; got {type(raw).__name__}")
    return raw


def yaml_reason(exc: yaml.YAMLError) -> str:
    """PyYAML's reason and position in one line (its own text spans several, quoting the file)."""
    parts = []
    for text, mark in (("context", "context_mark"), ("problem", "problem_mark")):
        what, at = getattr(exc, text, None), getattr(exc, mark, None)
        if what:
            where = f" (line {at.line + 1}, column {at.column + 1})" if at is not None else ""
            parts.append(f"{' '.join(str(what).split())}{where}")
    if not parts:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ": ".join(parts)
