"""Typed frozen configs: wrong fields are named in the error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from imagesynth.config import from_dict, from_json, to_json
from imagesynth.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    width: int = 8
    scale: float = 1.0


@dataclass(frozen=True)
class Outer:
    name: str
    sampler: Literal["euler", "heun"] = "heun"
    sizes: tuple[int, ...] = (32,)
    inner: Inner = field(default_factory=Inner)
    note: str | None = None


def test_round_trip_and_coercion():
    config = from_dict(Outer, {"name": "a", "sizes": [16, 32], "inner": {"scale": 2}})
    assert config == Outer("a", "heun", (16, 32), Inner(8, 2.0))
    assert from_json(Outer, to_json(config)) == config


@pytest.mark.parametrize("data,field_name", [
    ({}, "name"),
    ({"name": "a", "sampler": "ddim"}, "sampler"),
    ({"name": "a", "inner": {"width": "wide"}}, "inner.width"),
    ({"name": "a", "sizes": [1, "x"]}, "sizes[1]"),
    ({"name": "a", "colour": 1}, "Outer"),
    ({"name": "a", "inner": {"width": True}}, "inner.width"),
])
def test_errors_name_the_field(data, field_name):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    assert info.value.field == field_name


def test_invalid_json_is_a_config_error():
    with pytest.raises(ConfigError, match="invalid JSON"):
        from_json(Outer, "{")
