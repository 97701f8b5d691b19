"""Cutouts and augmentations of the drawn image, drawn from a dedicated seeded generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..diffusion.guidance import make_cutouts
from ..errors import ConfigError


@dataclass(frozen=True)
class CutoutConfig:
    """How many cutouts each step scores, how small they get, and how they are perturbed."""

    count: int = 32
    cut_power: float = 1.0  # > 1 favours small cutouts (details), < 1 large ones (composition)
    noise: float = 0.05  # std of Gaussian noise added to each cutout, scaled by a U(0, 1) draw
    flip: bool = True  # mirror half of the cutouts left-right
    #: random zoom-in (scale in [1 - j, 1]) and shift (up to j of the half-width) per cutout, as
    #: the CLIP was trained with: the drawing must then score well wherever it lands, which
    #: resists single-view adversarial patterns (Lucid's "transformation robustness")
    jitter: float = 0.0

    def __post_init__(self):
        if self.count < 1:
            raise ConfigError(f"must be >= 1, got {self.count}", field="cutouts")
        if not (math.isfinite(self.cut_power) and self.cut_power > 0):
            raise ConfigError(f"must be > 0, got {self.cut_power}", field="cut_power")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ConfigError(f"must be >= 0, got {self.noise}", field="cutout_noise")
        if not (math.isfinite(self.jitter) and 0 <= self.jitter <= 0.5):
            raise ConfigError(f"must be in [0, 0.5], got {self.jitter}", field="cutout_jitter",
                              fix="try 0.1")


def augmented_cutouts(image: torch.Tensor, cut_size: int, config: CutoutConfig,
                      generator: torch.Generator) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> [count * B, 3, cut_size, cut_size] random crops, flips and noise.

    Every random number (crop sizes and offsets, flips, noise) comes from `generator`, in a fixed
    order, so a run with the same seed sees the same cutouts at every step.
    """
    batch = image.shape[0]
    # [count * B, ...], cutout-major: the B images of a batch share each crop (editing relies on it)
    cutouts = make_cutouts(image, cut_size, config.count, generator, config.cut_power)
    if config.jitter > 0:
        cutouts = _zoom_shift(cutouts, batch, config.count, config.jitter, generator)
    if config.flip:
        flip = (torch.rand(config.count, generator=generator) < 0.5).repeat_interleave(batch)
        cutouts = torch.where(flip[:, None, None, None].to(cutouts.device), cutouts.flip(-1), cutouts)
    if config.noise > 0:
        # per-cutout strength, as in VQGAN-CLIP: some cutouts clean, some noisy
        strength = config.noise * torch.rand(config.count, 1, 1, 1, generator=generator)
        noise = torch.randn(cutouts.shape, generator=generator)
        cutouts = cutouts + (strength.repeat_interleave(batch, 0) * noise).to(cutouts)
    return cutouts


def _zoom_shift(cutouts: torch.Tensor, batch: int, count: int, jitter: float,
                generator: torch.Generator) -> torch.Tensor:
    """Zoom each cutout in by up to `jitter` and shift it by up to `jitter`; edges extend."""
    scale = 1 - jitter * torch.rand(count, generator=generator)
    shift = (torch.rand(count, 2, generator=generator) * 2 - 1) * jitter
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    theta = theta.repeat_interleave(batch, 0).to(cutouts)  # the batch shares each cutout's draw
    grid = F.affine_grid(theta, list(cutouts.shape), align_corners=False)
    return F.grid_sample(cutouts, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)
