"""The interface every generator family offers, so sample/interpolate/compare treat all alike."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class GeneratorFamily(Protocol):
    """A trained generator: draws images, image i from `generators[i]` alone."""

    #: the family name recorded as "family" in the model folder's config.json
    family: str
    #: side length of the square images it makes
    image_size: int
    #: True when `encode`/`decode` exist (see `LatentFamily`)
    has_latent: bool

    def sample(self, n: int, generators: Sequence[torch.Generator],
               condition: torch.Tensor | None = None) -> torch.Tensor:
        """`n` images [n, 3, H, W] in [-1, 1]; same generators and settings -> same bytes."""
        ...


@runtime_checkable
class LatentFamily(GeneratorFamily, Protocol):
    """A family with a latent space: images <-> latents (for interpolation and editing)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> latents [B, ...], deterministically."""
        ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latents [B, ...] -> images [B, 3, H, W] in [-1, 1]."""
        ...
