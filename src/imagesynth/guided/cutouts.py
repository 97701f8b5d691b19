"""Cutouts and augmentations of the drawn image, drawn from a dedicated seeded generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..diffusion.guidance import make_cutouts
from ..errors import ConfigError


@dataclass(frozen=True)
class CutoutConfig:
    """How many cutouts each step scores, how small they get, and how they are perturbed."""

    count: int = 32
    cut_power: float = 1.0  # > 1 favours small cutouts (details), < 1 large ones (composition)
    noise: float = 0.05  # std of Gaussian noise added to each cutout, scaled by a U(0, 1) draw
    flip: bool = True  # mirror half of the cutouts left-right

    def __post_init__(self):
        if self.count < 1:
            raise ConfigError(f"must be >= 1, got {self.count}", field="cutouts")
        if not (math.isfinite(self.cut_power) and self.cut_power > 0):
            raise ConfigError(f"must be > 0, got {self.cut_power}", field="cut_power")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ConfigError(f"must be >= 0, got {self.noise}", field="cutout_noise")


def augmented_cutouts(image: torch.Tensor, cut_size: int, config: CutoutConfig,
                      generator: torch.Generator) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> [count * B, 3, cut_size, cut_size] random crops, flips and noise.

    Every random number (crop sizes and offsets, flips, noise) comes from `generator`, in a fixed
    order, so a run with the same seed sees the same cutouts at every step.
    """
    batch = image.shape[0]
    # [count * B, ...], cutout-major: the B images of a batch share each crop (editing relies on it)
    cutouts = make_cutouts(image, cut_size, config.count, generator, config.cut_power)
    if config.flip:
        flip = (torch.rand(config.count, generator=generator) < 0.5).repeat_interleave(batch)
        cutouts = torch.where(flip[:, None, None, None].to(cutouts.device), cutouts.flip(-1), cutouts)
    if config.noise > 0:
        # per-cutout strength, as in VQGAN-CLIP: some cutouts clean, some noisy
        strength = config.noise * torch.rand(config.count, 1, 1, 1, generator=generator)
        noise = torch.randn(cutouts.shape, generator=generator)
        cutouts = cutouts + (strength.repeat_interleave(batch, 0) * noise).to(cutouts)
    return cutouts
