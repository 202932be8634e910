"""Typed checks for the config dataclasses, which are filled from untrusted files (config.json, training YAML/JSON).

Each field is checked against its annotation (``int``, ``float``, ``bool``, ``str``, ``Optional``, ``Union``,
``Tuple[X, Y]``, ``Tuple[X, ...]``, ``List``, ``Dict[str, X]``, nested config dataclasses) and the bounds declared
with :func:`option` in its field metadata. ``bool`` is never accepted for a number, nor a number for a ``bool``.
Values are normalised on the way: JSON lists become tuples where the annotation says tuple, and with
``numeric_strings`` a float field takes a numeric string (PyYAML reads ``6e-5`` as a string).

A failed check raises :class:`ConfigError` naming the field; loaders add the file (:meth:`ConfigError.located`).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

from .errors import ConfigError

__all__ = ["ConfigError", "Limits", "check_dataclass", "check_value", "dataclass_from_mapping", "describe",
           "numbers_from_strings", "option", "require_mapping"]

MAX_STRING_CHARS = 4096  # any string field, unless its limits say otherwise


@dataclass(frozen=True)
class Limits:
    """Bounds of a field: numbers in [low, high] (``low_open``: low excluded), strings among ``choices``,
    sequences of ``length`` (min, max) items, strings of at most ``max_chars``; numeric bounds and choices apply
    to every element of a sequence."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    choices: Optional[Tuple[str, ...]] = None
    length: Optional[Tuple[int, int]] = None
    max_chars: int = MAX_STRING_CHARS

    def describe_range(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"<= {self.high}"


def option(default: Any = dataclasses.MISSING, low: Optional[float] = None, high: Optional[float] = None, *,
           low_open: bool = False, choices: Optional[Iterable[str]] = None,
           length: Optional[Tuple[int, int]] = None, max_chars: int = MAX_STRING_CHARS,
           factory: Optional[Callable[[], Any]] = None) -> Any:
    """A dataclass field with bounds: ``num_heads: int = option(8, 1, 64)``."""
    limits = Limits(low, high, low_open, tuple(choices) if choices is not None else None, length, max_chars)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"limits": limits})
    return dataclasses.field(default=default, metadata={"limits": limits})


_NO_LIMITS = Limits()


def describe(value: Any) -> str:
    """A short, safe rendering of a (possibly huge) value for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation in (int, float, bool, str):
        return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[annotation]
    if origin is Union:
        return " or ".join(_type_name(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
        return f"a list of {_type_name(args[0]) if args else 'values'}"
    if origin is dict:
        return "an object"
    if dataclasses.is_dataclass(annotation):
        return f"a {annotation.__name__}"
    return str(annotation)


def _check_number(value: Any, kind: type, limits: Limits, numeric_strings: bool) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"must be {_type_name(kind)}, got {describe(value)}")
    if isinstance(value, str):
        if kind is not float or not numeric_strings:
            raise ConfigError(f"must be {_type_name(kind)}, got the string {describe(value)}")
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"must be a number, got the string {describe(value)}") from None
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"must be an integer, got {describe(value)}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"must be a finite number, got {value}")
    low, high = limits.low, limits.high
    if (low is not None and (value <= low if limits.low_open else value < low)) or (high is not None and value > high):
        raise ConfigError(f"must be {'an integer' if kind is int else 'a number'} {limits.describe_range()}, "
                          f"got {describe(value)}")
    return value


def _check_string(value: Any, limits: Limits) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, got {describe(value)}")
    if len(value) > limits.max_chars:
        raise ConfigError(f"must be a string of at most {limits.max_chars} characters, got {len(value)}")
    if limits.choices is not None and value not in limits.choices:
        raise ConfigError(f"must be one of {list(limits.choices)}, got {describe(value)}")
    return value


def _check_sequence(value: Any, annotation: Any, limits: Limits, numeric_strings: bool) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"must be {_type_name(annotation)}, got {describe(value)}")
    fixed = origin is tuple and args and args[-1] is not Ellipsis
    if fixed and len(value) != len(args):
        raise ConfigError(f"must be {_type_name(annotation)}, got {len(value)} item(s): {describe(value)}")
    if limits.length is not None and not limits.length[0] <= len(value) <= limits.length[1]:
        raise ConfigError(f"must have {limits.length[0]}..{limits.length[1]} items, got {len(value)}")
    element_types = args if fixed else (args[0] if args else Any,) * len(value)
    items = []
    for index, (item, item_type) in enumerate(zip(value, element_types)):
        try:
            items.append(check_value(item, item_type, dataclasses.replace(limits, length=None), numeric_strings))
        except ConfigError as err:
            raise ConfigError(f"item {index} {err.problem}") from None  # reads "<field> item 2 must be ..."
    return tuple(items) if origin is tuple else items


def _same_kind(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    if origin in (tuple, list):
        return isinstance(value, (list, tuple))
    return isinstance(origin, type) and isinstance(value, origin)


def check_value(value: Any, annotation: Any, limits: Limits = _NO_LIMITS, numeric_strings: bool = False) -> Any:
    """``value`` checked against ``annotation`` and ``limits``, normalised; raises ConfigError (no field name)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"must be null, got {describe(value)}")
        return None
    if origin is Union:
        if value is None and type(None) in args:
            return None
        problems = []
        for member in (a for a in args if a is not type(None)):
            try:
                return check_value(value, member, limits, numeric_strings)
            except ConfigError as err:
                problems.append((_same_kind(value, member), err.problem))
        matching = [problem for same, problem in problems if same]
        if len(matching) == 1:  # the member of the value's own kind says best what is wrong with it
            raise ConfigError(matching[0])
        if len(problems) == 1:
            raise ConfigError(problems[0][1] + (" or null" if type(None) in args else ""))
        raise ConfigError(f"must be {_type_name(annotation)}, got {describe(value)}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {describe(value)}")
        return value
    if annotation in (int, float):
        return _check_number(value, annotation, limits, numeric_strings)
    if annotation is str:
        return _check_string(value, limits)
    if origin in (tuple, list):
        return _check_sequence(value, annotation, limits, numeric_strings)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"must be an object, got {describe(value)}")
        key_type, value_type = args if args else (str, Any)
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"must have string keys only, got {describe(key)}")
            try:
                out[key] = check_value(item, value_type, _NO_LIMITS, numeric_strings)
            except ConfigError as err:
                raise err.located(prefix=key) from None
        return out
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, annotation):
            raise ConfigError(f"must be {_type_name(annotation)}, got {describe(value)}")
        return value
    if isinstance(annotation, type):
        if not isinstance(value, annotation):
            raise ConfigError(f"must be {_type_name(annotation)}, got {describe(value)}")
        return value
    raise TypeError(f"check_value cannot check annotation {annotation!r}")  # a programming error, not input


_HINTS: Dict[type, Dict[str, Any]] = {}


def _hints(cls: type) -> Dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def check_dataclass(obj: Any, numeric_strings: bool = False, skip: Sequence[str] = ()) -> None:
    """Check and normalise every field of a dataclass instance in place (call it from ``__post_init__``)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        limits = f.metadata.get("limits", _NO_LIMITS)
        try:
            value = check_value(getattr(obj, f.name), hints[f.name], limits, numeric_strings)
        except ConfigError as err:
            raise err.located(prefix=f.name) from None
        object.__setattr__(obj, f.name, value)


def numbers_from_strings(cls: Any, values: Mapping[str, Any]) -> Dict[str, Any]:
    """``values`` (options of dataclass ``cls``) with numeric strings turned into floats where ``cls`` declares a
    float, as YAML needs (``dropout: 5e-2`` reads as a string); anything else is left for the checks to judge."""
    hints, out = _hints(cls), dict(values)
    for key, value in values.items():
        if isinstance(value, str) and float in (hints.get(key), *typing.get_args(hints.get(key))):
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def require_mapping(data: Any) -> Mapping[str, Any]:
    """``data`` if it is a JSON object with string keys, else ConfigError."""
    if not isinstance(data, Mapping):
        kind = {list: "a list", str: "a string"}.get(type(data), describe(data))
        raise ConfigError(f"must be a JSON object (mapping of name: value), got {kind}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"must have string keys only, got {describe(bad[0])}")
    return data


def dataclass_from_mapping(cls: Any, data: Any, ignore: Sequence[str] = ()) -> Any:
    """Build dataclass ``cls`` from a mapping: unknown keys and missing required fields are ConfigErrors; the
    values are checked by the class's own ``__post_init__`` (which calls :func:`check_dataclass`)."""
    data = require_mapping(data)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields and k not in ignore]
    if unknown:
        raise ConfigError(f"is not a known option; valid options: {sorted(fields)}", field=unknown[0])
    missing = [name for name, f in fields.items() if name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError("is required", field=missing[0])
    return cls(**{k: v for k, v in data.items() if k in fields})
