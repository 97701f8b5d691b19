"""Per-sample noise: image i of a batch draws only from generator i, so batching never changes it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError


def generators_from_seeds(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One seeded `torch.Generator` per image; CPU by default so noise is identical across devices."""
    generators = []
    for index, seed in enumerate(seeds):
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
            raise ConfigError(f"seed #{index} must be an integer in [0, 2^63), got {seed!r}",
                              field="seeds")
        generators.append(torch.Generator(device=device).manual_seed(seed))
    return generators


def _check_generators(generators: Sequence[torch.Generator], batch_size: int) -> None:
    if len(generators) != batch_size:
        raise ConfigError(f"expected one generator per image ({batch_size}), got {len(generators)}",
                          field="generator", fix="pass generators_from_seeds(seeds), one seed per image")


def randn_like_per_sample(x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Standard normal noise shaped like `x`; row i comes from `generators[i]` alone."""
    _check_generators(generators, x.shape[0])
    # Drawing on the generator's device then moving keeps CPU-seeded noise identical on any device.
    device = generators[0].device if generators else x.device
    noise = torch.empty(x.shape, device=device, dtype=x.dtype)
    for row, g in zip(noise, generators):
        torch.randn(x.shape[1:], generator=g, out=row)  # each row from its own generator
    return noise.to(x.device)


def initial_noise(shape: Sequence[int], seeds: Sequence[int], sigma_max: float | torch.Tensor,
                  *, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[torch.Generator]]:
    """Starting latents `sigma_max * N(0, I)` of shape [len(seeds), *shape] and the generators to keep sampling with."""
    generators = generators_from_seeds(seeds)
    template = torch.empty((len(seeds), *shape), dtype=dtype)
    x = randn_like_per_sample(template, generators) * sigma_max
    return x.to(device), generators
