"""Typed frozen configs: build from dicts with field-level errors, serialise to JSON."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def to_dict(config: Any) -> dict:
    """Convert a (nested) dataclass config to plain JSON-able data."""
    return dataclasses.asdict(config)


def to_json(config: Any) -> str:
    """Canonical JSON (sorted keys) so equal configs hash equally."""
    return json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))


def _coerce(value: Any, annotation: Any, field: str) -> Any:
    """Check/convert one value against a type annotation; raise ConfigError naming `field`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, field)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError("unsupported value", field=field)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"must be one of {', '.join(map(repr, args))}, got {value!r}",
                              field=field)
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"must be a list, got {type(value).__name__}", field=field)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"must have {len(args)} items, got {len(value)}", field=field)
            return tuple(_coerce(v, a, f"{field}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"must be a mapping, got {type(value).__name__}", field=field)
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        return from_dict(annotation, value, prefix=f"{field}.")
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"must be a number, got {value!r}", field=field)
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"must be an integer, got {value!r}", field=field)
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}", field=field)
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {value!r}", field=field)
        return value
    return value


def from_dict(cls: type[T], data: dict, *, prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"must be a mapping, got {type(data).__name__}", field=prefix.rstrip(".")
                          or cls.__name__)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(unknown)}",
                          field=prefix.rstrip(".") or cls.__name__,
                          fix=f"known fields are {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError("is required", field=prefix + name)
    return cls(**kwargs)


def from_json(cls: type[T], text: str) -> T:
    """Parse JSON text into dataclass `cls`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON ({exc.msg} at line {exc.lineno})",
                          field=cls.__name__) from None
    return from_dict(cls, data)
