"""PSNR between uint8 image sets (reconstruction quality of autoencoders and tokenizers)."""

from __future__ import annotations

import torch


def psnr(images_u8: torch.Tensor, reconstructions_u8: torch.Tensor) -> float:
    """Mean over images of PSNR = 10 log10(255^2 / MSE), in dB (identical images capped at 100)."""
    error = (images_u8.double() - reconstructions_u8.double()).square().flatten(1).mean(1)
    per_image = 10 * torch.log10(255.0**2 / error.clamp_min(255.0**2 * 1e-10))
    return per_image.mean().item()
