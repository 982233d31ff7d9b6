"""Reading an experiment: YAML file < overrides, each value checked against its declared type, the
result built and validated section by section; and the way back (dict, YAML, dotted keys)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from common import yamlfile
from common.config.coerce import _coerce
from common.config.experiment import ExperimentConfig
from common.errors import ConfigError


def load(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Build an ExperimentConfig from a YAML file plus flat dotted-key overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(Path(path))
    source = str(path) if path is not None else "<defaults>"
    _check_override_keys(overrides or {})
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    return _build(ExperimentConfig, raw, prefix="", source=source)


def _check_override_keys(overrides: Mapping[str, Any]) -> None:
    """An override (``--set``, ``--run-config``, a sweep's grid) must name a known dotted key;
    blamed on the override, not on the YAML file it would have changed."""
    known = flat_keys()
    for key in overrides:
        if not str(key).strip():
            raise ConfigError("an override has an empty key; overrides are key=value, e.g. train.lr=0.01")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; run with a key from README's config reference"
            raise ConfigError(f"unknown config key '{key}' in the overrides{hint}")


def read_yaml(path: Path) -> dict[str, Any]:
    return yamlfile.read_mapping(path, "experiment file")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) for YAML/JSON output."""
    out = dataclasses.asdict(cfg)
    return _listify(out)


def dump(cfg: ExperimentConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flat_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every overridable dotted key, e.g. ``train.lr``."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += flat_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def replace(cfg: ExperimentConfig, **changes: Any) -> ExperimentConfig:
    """Return a copy with dotted keys changed, re-validated (e.g. ``{"data.labels": (...)}``)."""
    raw = to_dict(cfg)
    for key, value in changes.items():
        _set_dotted(raw, key.replace("__", "."), value)
    return _build(ExperimentConfig, raw, prefix="", source="<replace>")


def _listify(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _listify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_listify(v) for v in obj]
    return obj


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    section = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{section}' in {source} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' in {source}{_suggest(prefix, str(unknown[0]), names)}; "
            f"known keys in {section}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in raw.items():
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{key}.", source)
        else:
            kwargs[name] = _coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the unknown-key check
        raise ConfigError(f"config section '{section}': {exc}") from None


def _suggest(prefix: str, name: str, names: set[str]) -> str:
    """A hint for an unknown key: a close name in its section, the section a bare key belongs in, or
    the nested form of a dotted key written in YAML."""
    if f"{prefix}{name}" in flat_keys():
        head, _, tail = name.partition(".")
        return f"; in a YAML file write dotted keys nested ('{head}:' then '  {tail}: ...')"
    close = difflib.get_close_matches(name, sorted(names), n=1)
    if close:
        return f"; did you mean '{prefix}{close[0]}'?"
    elsewhere = [k for k in flat_keys() if k.startswith(prefix) and k.rsplit(".", 1)[-1] == name]
    return f"; did you mean '{elsewhere[0]}'?" if elsewhere else ""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections to dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1} (what ``load`` takes)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
