"""Perceptual path length (Karras et al. 2019) for any generator with a Gaussian latent.

PPL = E[ d(G(ι(z₀, z₁; t)), G(ι(z₀, z₁; t + ε))) / ε² ], z₀, z₁ ~ N(0, I), ι = lerp or slerp.
`sampling="end"` fixes t = 0 (torch-fidelity's `ppl`), `"full"` draws t ~ U(0, 1) (StyleGAN's
`ppl_*full`). Distances outside the [1st, 99th] percentiles are discarded as in both anchors.
The distance is the caller's: LPIPS is the paper's choice (it needs VGG weights, which cannot
be downloaded here); `squared_l2_distance` is provided for pixels or feature embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError, NumericError
from ._arrays import as_generator

DEFAULT_SEED = 2020
INTERPOLATIONS = ("lerp", "slerp")
SAMPLINGS = ("end", "full")


@dataclass(frozen=True)
class PathLengthResult:
    """Mean and std of the kept scaled distances, and the distances themselves."""

    mean: float
    std: float
    distances: np.ndarray


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Linear interpolation a + (b − a)·t."""
    return a + (b - a) * t


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float,
          eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation of the rows of a and b; falls back to lerp when collinear."""
    a_unit = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    b_unit = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    cos_omega = (a_unit * b_unit).sum(dim=-1, keepdim=True)
    omega = cos_omega.clamp(-1.0, 1.0).acos()
    sin_omega = omega.sin().clamp_min(eps)
    out = ((1 - t) * omega).sin() / sin_omega * a + (t * omega).sin() / sin_omega * b
    degenerate = (cos_omega.abs() > 1 - eps) | (a.norm(dim=-1, keepdim=True) < eps) | \
        (b.norm(dim=-1, keepdim=True) < eps)
    return torch.where(degenerate, lerp(a, b, t), out)


def squared_l2_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample squared Euclidean distance over all non-batch dimensions."""
    return (x - y).flatten(1).pow(2).sum(dim=1)


def perceptual_path_length(generate: Callable[[torch.Tensor], torch.Tensor], latent_dim: int,
                           distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] =
                           squared_l2_distance, num_samples: int = 10_000, *,
                           epsilon: float = 1e-4, interpolation: str = "lerp",
                           sampling: str = "end",
                           discard_percentiles: tuple[float, float] | None = (1.0, 99.0),
                           batch_size: int = 64, dtype: torch.dtype = torch.float32,
                           generator: torch.Generator | int | None = None) -> PathLengthResult:
    """PPL of `generate` (latents (B, latent_dim) → images) under `distance`."""
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation {interpolation!r}", field="interpolation",
                          fix=f"use one of {', '.join(INTERPOLATIONS)}")
    if sampling not in SAMPLINGS:
        raise ConfigError(f"unknown sampling {sampling!r}", field="sampling",
                          fix=f"use one of {', '.join(SAMPLINGS)}")
    if not epsilon > 0:
        raise ConfigError(f"must be positive, got {epsilon}", field="epsilon")
    if num_samples < 1 or latent_dim < 1 or batch_size < 1:
        raise ConfigError("num_samples, latent_dim and batch_size must be positive",
                          field="num_samples")
    rng = as_generator(generator, DEFAULT_SEED)
    interpolate = lerp if interpolation == "lerp" else slerp
    scaled = []
    with torch.no_grad():
        for start in range(0, num_samples, batch_size):
            b = min(batch_size, num_samples - start)
            z0 = torch.randn(b, latent_dim, generator=rng, dtype=dtype)
            z1 = torch.randn(b, latent_dim, generator=rng, dtype=dtype)
            t = torch.rand(b, 1, generator=rng, dtype=dtype) if sampling == "full" else \
                torch.zeros(b, 1, dtype=dtype)
            images = generate(torch.cat([interpolate(z0, z1, t), interpolate(z0, z1, t + epsilon)]))
            first, second = images.chunk(2)
            scaled.append((distance(first, second) / epsilon ** 2).double().cpu().numpy())
    d = np.concatenate(scaled)
    if not np.isfinite(d).all():
        raise NumericError("the generator or distance produced NaN/Inf", field="generate")
    if discard_percentiles is not None:
        lower, upper = discard_percentiles
        lo = np.percentile(d, lower, method="lower")
        hi = np.percentile(d, upper, method="higher")
        d = d[(lo <= d) & (d <= hi)]
    return PathLengthResult(float(d.mean()), float(d.std()), d)
