"""Checking one config value against its declared type, naming the dotted key when it does not fit.

pydantic in strict mode checks choices (Literal), booleans and integers, and that floats are finite.
Config files and run-config overrides also use a few spellings strict mode refuses, so each is
admitted explicitly and no others: "true" / "false" for booleans, an integral float (``3.0``) for an
integer, Python's own number syntax for floats (``"1e-3"``, ``" 2 "``), numbers for strings, and
"a,b,c" for lists. What pydantic's lax mode would add (a bool or "3" as an integer, "yes" as true,
bytes as a string) stays refused. Strings and lists are converted by hand: every item and number
becomes its ``str()``, which no pydantic mode does for every type.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import AllowInfNan, TypeAdapter, ValidationError

from common.errors import ConfigError

_BOOL = TypeAdapter(bool)
_BOOL_WORDS = ("true", "false")
_INT = TypeAdapter(int)
_FINITE = TypeAdapter(Annotated[float, AllowInfNan(False)])


@functools.cache
def _choices(tp: Any) -> TypeAdapter[Any]:
    """One adapter per Literal type (building one costs far more than using it)."""
    return TypeAdapter(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check and convert one value to its declared type; raise naming the key."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        try:
            _choices(tp).validate_python(value, strict=True)
        except ValidationError:
            choices = typing.get_args(tp)
            raise ConfigError(
                f"config key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}"
            ) from None
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:
        # Every item becomes its text: labels may be written as numbers ([0, 1]).
        if isinstance(value, str):  # run-config overrides carry lists as "a,b,c"
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list; got {value!r}")
        return tuple(str(v) for v in value)
    if tp is bool:
        word = isinstance(value, str) and value.lower() in _BOOL_WORDS
        try:
            return _BOOL.validate_python(value, strict=not word)
        except ValidationError:
            raise ConfigError(f"config key '{key}' must be true or false; got {value!r}") from None
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            _INT.validate_python(value, strict=True)
        except ValidationError:
            raise ConfigError(f"config key '{key}' must be an integer; got {value!r}") from None
        return value  # as given: an int subclass (an IntEnum) stays what the caller passed
    if tp is float:
        return _number(value, key)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a string; got {value!r}")
        return str(value)
    raise ConfigError(f"config key '{key}' has unsupported type {tp}")  # pragma: no cover


def _number(value: Any, key: str) -> float:
    """A finite float. Python's float() reads the value: its syntax is the one configs accept, and
    pydantic's string parser differs from it at the edges (e.g. non-ASCII digits)."""
    if isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be a number; got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}' must be a number; got {value!r}") from None
    try:
        return _FINITE.validate_python(out, strict=True)
    except ValidationError:
        raise ConfigError(f"config key '{key}' must be finite; got {value!r}") from None
