"""Edits of existing images: img2img (strength -> sigmas), inpainting with a mask, outpainting.

How `strength` maps to the noise schedule
-----------------------------------------
`img2img_sigmas(num_steps, strength, sigma_min, sigma_max, rho)` keeps the step count fixed and
starts part-way down the Karras ramp. The full schedule is
sigma(u) = (sigma_max^(1/rho) + u (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for u in [0, 1];
img2img evaluates it at `num_steps` evenly spaced u in [1 - strength, 1] (then appends 0). So the
image is noised to sigma(1 - strength) and denoised in exactly `num_steps` sampler steps, whatever
the strength: strength=1 is plain text-to-image, strength=0.5 starts at the middle of the ramp.

Other tools differ:
- diffusers (`StableDiffusionImg2ImgPipeline.get_timesteps`) runs only part of the N-step schedule:
  init = min(int(N * strength), N), it starts at index N - init, so it runs int(N * strength)
  steps (floored; strength 0.29 with N=10 runs 2 steps). `truncate_sigmas` reproduces this rule.
- ComfyUI (`KSampler` with `denoise` < 1) builds a schedule of int(steps / denoise) steps and keeps
  its last `steps + 1` sigmas, so the step count stays `steps`, as here, but the start noise level
  comes from the rounded longer schedule rather than from the continuous ramp position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .denoisers import append_dims
from .noise import randn_like_per_sample
from .schedules import _check_range, _check_steps, validate_sigmas


def _check_strength(strength: float) -> None:
    if not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise ConfigError(f"must be in [0, 1], got {strength!r}", field="strength",
                          fix="0 keeps the input image, 1 ignores it; try 0.6")


def img2img_sigmas(num_steps: int, strength: float, sigma_min: float, sigma_max: float, rho: float = 7.0,
                   *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Karras schedule restricted to ramp positions [1 - strength, 1]: num_steps steps from sigma(1 - strength) to 0."""
    _check_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    _check_strength(strength)
    if strength == 0:
        raise ConfigError("is 0, so there is nothing to denoise", field="strength",
                          fix="use the input image as is, or a strength above 0")
    ramp = torch.linspace(1 - strength, 1, num_steps, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    if num_steps > 1 and not (sigmas[1:] < sigmas[:-1]).all():
        raise ConfigError(f"{strength} is too small for {num_steps} distinct steps", field="strength")
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(dtype)


def truncate_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """diffusers' img2img rule on any schedule of N steps: keep the last int(N * strength) steps."""
    validate_sigmas(sigmas)
    _check_strength(strength)
    num_steps = len(sigmas) - 1
    kept = min(int(num_steps * strength), num_steps)
    if kept < 1:
        raise ConfigError(f"{strength} x {num_steps} steps leaves no step to run", field="strength",
                          fix="raise strength or the number of steps")
    return sigmas[num_steps - kept:]


def noise_to_sigma(x0: torch.Tensor, sigma: torch.Tensor | float,
                   generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Forward process at one level: x = x0 + sigma n, with n drawn per sample from `generators`."""
    return x0 + randn_like_per_sample(x0, generators) * sigma


def img2img(sampler: Callable[..., torch.Tensor], denoiser: Callable[..., torch.Tensor], x0: torch.Tensor,
            sigmas: torch.Tensor, generators: Sequence[torch.Generator], **options: Any) -> torch.Tensor:
    """Noise x0 (image or latents) to sigmas[0] and run `sampler` over `sigmas` (e.g. from img2img_sigmas)."""
    validate_sigmas(sigmas)
    x = noise_to_sigma(x0, sigmas[0], generators)
    return sampler(denoiser, x, sigmas, generator=generators, **options)


def _gaussian_kernel(radius: float, dtype: torch.dtype) -> torch.Tensor:
    half = max(1, int(3 * radius + 0.5))
    offsets = torch.arange(-half, half + 1, dtype=dtype)
    kernel = torch.exp(-offsets ** 2 / (2 * radius ** 2))
    return kernel / kernel.sum()


def blur_mask(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Soften a mask [B, 1, H, W] with a separable Gaussian of std `radius` pixels (0 = unchanged)."""
    if radius < 0:
        raise ConfigError(f"must be >= 0, got {radius!r}", field="mask_blur")
    if radius == 0:
        return mask
    kernel = _gaussian_kernel(radius, mask.dtype).to(mask.device)
    pad = len(kernel) // 2
    blurred = F.conv2d(F.pad(mask, (pad, pad, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    blurred = F.conv2d(F.pad(blurred, (0, 0, pad, pad), mode="replicate"), kernel.view(1, 1, -1, 1))
    return blurred.clamp(0, 1)


def check_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Validate a repaint mask against x: [B or 1, 1, H, W] with x's H, W and values in [0, 1]."""
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1:
        raise ConfigError("must be a tensor of shape [B, 1, H, W]", field="mask")
    if mask.shape[2:] != x.shape[2:] or mask.shape[0] not in (1, x.shape[0]):
        raise ConfigError(f"shape {tuple(mask.shape)} does not fit the image/latents {tuple(x.shape)}",
                          field="mask", fix="resize the mask to the image size (latent size for latent models)")
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ConfigError("values must lie in [0, 1] (1 = repaint, 0 = keep)", field="mask")
    return mask


class InpaintDenoiser:
    """Repaint where mask = 1 and keep x0 where mask = 0 (soft values blend).

    Every call re-noises the known region to the current sigma with a fixed per-sample noise
    (x_known = x0 + sigma n), so the known pixels the network sees are always consistent with sigma,
    and returns x0 there, so the sampler converges to exactly x0 outside the mask.
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], x0: torch.Tensor, mask: torch.Tensor,
                 generators: Sequence[torch.Generator], mask_blur: float = 0.0):
        self.denoiser = denoiser
        self.x0 = x0
        self.mask = blur_mask(check_mask(mask, x0).to(x0.dtype), mask_blur)
        self.noise = randn_like_per_sample(x0, generators)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        """Denoised estimate with the known region pinned to x0."""
        known = self.x0 + self.noise * append_dims(sigma, x.ndim)
        x_in = self.mask * x + (1 - self.mask) * known
        denoised = self.denoiser(x_in, sigma, **cond)
        return self.mask * denoised + (1 - self.mask) * self.x0

    def start(self, sigma_max: torch.Tensor | float, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Starting x: pure noise in the hole, the consistently noised image elsewhere."""
        fresh = randn_like_per_sample(self.x0, generators) * sigma_max
        return self.mask * fresh + (1 - self.mask) * (self.x0 + self.noise * sigma_max)


def pad_for_outpaint(image: torch.Tensor, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0,
                     overlap: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Outpainting = pad + inpaint: returns the edge-padded image [B,C,H',W'] and its mask [B,1,H',W'].

    The mask is 1 on the new border and also `overlap` pixels into the original, so the seam is repainted.
    """
    sizes = {"left": left, "top": top, "right": right, "bottom": bottom, "overlap": overlap}
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"must be an integer >= 0, got {value!r}", field=name)
    if left + top + right + bottom == 0:
        raise ConfigError("no border to paint", field="left", fix="give at least one of left/top/right/bottom > 0")
    if image.ndim != 4:
        raise ConfigError("must have shape [B, C, H, W]", field="image")
    padded = F.pad(image, (left, right, top, bottom), mode="replicate")
    batch, _, height, width = padded.shape
    mask = torch.ones(batch, 1, height, width, dtype=image.dtype, device=image.device)
    inner_top, inner_left = top + (overlap if top else 0), left + (overlap if left else 0)
    inner_bottom = height - bottom - (overlap if bottom else 0)
    inner_right = width - right - (overlap if right else 0)
    mask[:, :, inner_top:max(inner_top, inner_bottom), inner_left:max(inner_left, inner_right)] = 0
    return padded, mask
