"""Losses for CLIP-guided synthesis: weighted spherical distance, regularisers, directional CLIP."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion.guidance import spherical_distance_loss

__all__ = ["directional_loss", "prompt_loss", "range_loss", "saturation_loss",
           "spherical_distance_loss", "total_variation_loss"]


def prompt_loss(image_embeddings: torch.Tensor, targets: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
    """sum_p w_p * mean_n d_sph(e_n, t_p) for cutout embeddings [N, D], targets [P, D], weights [P].

    A negative weight makes its target repel (Crowson's VQGAN+CLIP prompt term).
    """
    distances = spherical_distance_loss(image_embeddings[:, None, :], targets[None, :, :])  # [N, P]
    return (distances.mean(0) * weights.to(distances)).sum()


def total_variation_loss(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels (Disco Diffusion's `tv_loss`)."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


def range_loss(image: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Mean squared amount by which values leave [low, high]."""
    return (image - image.clamp(low, high)).pow(2).mean()


def saturation_loss(image: torch.Tensor) -> torch.Tensor:
    """Mean distance of each pixel's colour from its grey value: penalises over-saturated colour."""
    grey = image.mean(dim=1, keepdim=True)
    return (image - grey).abs().mean()


def directional_loss(image_embeddings: torch.Tensor, source_image_embedding: torch.Tensor,
                     text_direction: torch.Tensor) -> torch.Tensor:
    """StyleGAN-NADA's 1 - cos(ΔI, ΔT): the image should move (from the source) the way the text does.

    image_embeddings [N, D] of the edited image's cutouts, source_image_embedding [1, D] or [N, D],
    text_direction [1, D] (target text minus source text).
    """
    delta_I = F.normalize(image_embeddings - source_image_embedding, dim=-1)
    delta_T = F.normalize(text_direction, dim=-1)
    return (1 - (delta_I * delta_T).sum(-1)).mean()
