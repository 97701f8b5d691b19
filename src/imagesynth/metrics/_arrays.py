"""Validation shared by every metric: feature arrays in, float64 NumPy out, clear errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, NumericError


def as_features(values: Any, field: str, *, min_samples: int = 2,
                dtype: type = np.float64) -> np.ndarray:
    """Convert a (N, d) NumPy array or torch tensor to a finite NumPy array, or raise."""
    if torch.is_tensor(values):
        values = values.detach().to("cpu").numpy()
    array = np.asarray(values)
    if array.ndim != 2:
        raise ConfigError(f"expected a 2-D (samples, dims) array, got shape {array.shape}",
                          field=field, fix="pass one feature row per sample")
    if array.shape[0] < min_samples:
        raise ConfigError(f"has {array.shape[0]} samples; at least {min_samples} are needed",
                          field=field, fix="pass more samples")
    if array.shape[1] < 1:
        raise ConfigError("has 0 feature dimensions", field=field)
    array = array.astype(dtype, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise NumericError(f"{bad} of {array.shape[0]} feature rows contain NaN or Inf",
                           field=field, fix="check the extractor and the input images")
    return array


def check_same_dims(first: np.ndarray, second: np.ndarray, first_field: str,
                    second_field: str) -> None:
    """Raise if two feature arrays have different widths."""
    if first.shape[1] != second.shape[1]:
        raise ConfigError(f"has {second.shape[1]} feature dims but {first_field} has "
                          f"{first.shape[1]}", field=second_field,
                          fix="extract both sets with the same extractor")


def as_generator(generator: torch.Generator | int | None, default_seed: int) -> torch.Generator:
    """A CPU torch.Generator: the one given, one seeded with an int, or the default seed."""
    if isinstance(generator, torch.Generator):
        return generator
    seeded = torch.Generator()
    seeded.manual_seed(default_seed if generator is None else int(generator))
    return seeded
