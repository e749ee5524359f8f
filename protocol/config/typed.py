"""Typed config loading: plain mappings (from YAML) -> frozen dataclasses, or a ConfigError naming the key.

Supported field types: bool, int, float, str, Literal[...], X | None, list[X], tuple[X, ...],
dict[str, X] and nested dataclasses. Numbers written as strings (PyYAML reads `1e-3` as a string)
are accepted for int and float fields. Bounds that hold for every field, whatever its section checks:
a float is finite (inf and nan are refused: no field takes them; an unbounded setting is written as
null where the schema offers it), an int fits in a signed 64-bit integer (what torch, numpy, msgpack and
ZeroMQ take). A dataclass may define `check(self) -> None` that raises ConfigError with a key relative to
itself; `build` prefixes the path.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from protocol.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = typing.TypeVar("T", bound="DataclassInstance")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def build(cls: type[T], data: Any, path: str = "") -> T:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path or "<root>", f"expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{_join(path, close[0])}'?" if close else f"; known keys: {sorted(fields)}"
            raise ConfigError(_join(path, str(key)), f"unknown key{hint}")
    values = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name in data:
            values[name] = coerce(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "is required")
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as err:
            raise ConfigError(_join(path, err.key), err.message) from None
    return obj


def coerce(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(option, value, key)
            except ConfigError as err:
                errors.append(err.message)
        raise ConfigError(key, " or ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {list(args)}, got {value!r}")
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if origin in (list, tuple):
        return _sequence(origin, args, value, key)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {_kind(value)}")
        return {str(k): coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    return _scalar(hint, value, key)


def _sequence(origin: Any, args: tuple, value: Any, key: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"expected a list, got {_kind(value)}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(key, f"expected a list of {len(args)} values, got {len(value)}")
        return tuple(coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    item = args[0] if args else Any
    out = [coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(out) if origin is tuple else out


def _scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if hint is int:
        return _integer(value, key)
    if hint is float:
        return _finite_float(value, key)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {_kind(value)} {value!r}")
    raise ConfigError(key, f"unsupported config type {hint!r}")


def _integer(value: Any, key: str) -> int:
    number = _number(value)
    if number is None or number != number:
        raise ConfigError(key, f"expected a number, got {value!r}")
    if isinstance(number, float) and (not math.isfinite(number) or number != int(number)):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    number = int(number)
    if not INT64_MIN <= number <= INT64_MAX:
        raise ConfigError(key, f"{value!r} does not fit in a 64-bit integer (-2^63 .. 2^63 - 1)")
    return number


def _finite_float(value: Any, key: str) -> float:
    number = _number(value)
    if number is None or number != number:
        raise ConfigError(key, f"expected a number, got {value!r}")
    try:
        number = float(number)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    return number


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            return None
    return None


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain YAML-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return type(value).__name__
