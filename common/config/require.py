"""How a section refuses a value: a ConfigError naming the dotted key, so a typo or a bad value never
falls back to a default unnoticed."""

from __future__ import annotations

from common.errors import ConfigError


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {why}")
