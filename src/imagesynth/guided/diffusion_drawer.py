"""The diffusion-latent drawer: the starting noise of a text-to-image diffusion model (DOODL-style).

The image is what a short deterministic sampler makes from the noise, with classifier-free guidance
on the prompt; CLIP's gradient flows back through every sampler step into the noise, so the
optimisation stays on the diffusion model's image manifold (Wallace et al. 2023, "DOODL").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..diffusion import get_sampler
from ..errors import ConfigError
from .drawers import clamp_with_grad
from .prompts import WeightedPrompt

if TYPE_CHECKING:
    from ..pipeline import DiffusionPipeline

#: deterministic samplers the drawer may differentiate through (no fresh noise per render)
SAMPLERS = ("dpmpp_2m", "euler")
DEFAULT_STEPS = 6


def conditioning_texts(targets: list[WeightedPrompt]) -> tuple[str, str]:
    """(prompt, negative prompt) for the model: positive text targets joined, negative ones joined."""
    positive = [t.text for t in targets if not t.is_image and t.weight > 0]
    negative = [t.text for t in targets if not t.is_image and t.weight < 0]
    return ", ".join(positive), ", ".join(negative)


def missing_model_error() -> ConfigError:
    """The error for a diffusion-latent run that names no diffusion model."""
    return ConfigError("the diffusion-latent drawer needs a text-to-image diffusion model",
                       field="diffusion_model",
                       fix="pass --diffusion-model NAME_OR_FOLDER (an imagesynth diffusion model)")


def no_init_image_error() -> ConfigError:
    """The error for a diffusion-latent run asked to start from an image."""
    return ConfigError("the diffusion-latent drawer cannot start from an image", field="init_image",
                       fix="drop --init-image, or use --drawer decoder or pixels to edit")


def check_options(num_steps: int, sampler: str, guidance_scale: float | None) -> None:
    """Validate the drawer's sampling options; errors name the dream field at fault."""
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ConfigError(f"must be an integer >= 1, got {num_steps!r}", field="diffusion_steps")
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown or non-deterministic sampler {sampler!r}",
                          field="diffusion_sampler", fix=f"choose one of {', '.join(SAMPLERS)}")
    if guidance_scale is not None and not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ConfigError(f"must be >= 0, got {guidance_scale!r}", field="diffusion_guidance",
                          fix="0 ignores the prompt, 1 is plain conditioning, 2-5 is typical")


class DiffusionLatentDrawer(nn.Module):
    """The initial noise z of a diffusion model's deterministic sampler, optimised through it.

    render() = decode(sampler(CFG(D), sigma_max * z_hat, Karras sigmas)) mapped to [0, 1], with
    z_hat = z sqrt(n) / |z|: the noise is kept on the shell where n-dimensional Gaussian noise lies
    (DOODL's renormalisation), so the sampler always starts from noise of the norm it expects.
    """

    def __init__(self, height: int, width: int, generator: torch.Generator,
                 pipeline: "DiffusionPipeline", prompt: str, negative_prompt: str = "",
                 num_steps: int = DEFAULT_STEPS, sampler: str = "dpmpp_2m",
                 guidance_scale: float | None = None):
        super().__init__()
        pipeline.check_size(width, height)
        check_options(num_steps, sampler, guidance_scale)
        self.size = (height, width)
        self.pipeline = pipeline
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.num_steps, self.sampler = num_steps, sampler
        self.guidance_scale = (pipeline.default_guidance if guidance_scale is None
                               else float(guidance_scale))
        # Frozen: the optimiser moves only the noise, so no gradient is kept for the weights.
        for module in (pipeline.denoiser, pipeline.autoencoder):
            if module is not None:
                module.eval().requires_grad_(False)
        with torch.no_grad():
            self.denoiser = pipeline.guided_denoiser([prompt], negative_prompt, self.guidance_scale)
        self.sigmas = pipeline.sigmas(num_steps)
        # The engine's samplers are no_grad for generation; the undecorated function lets the
        # gradient reach the noise (and still runs without a graph under the loop's no_grad).
        sample = get_sampler(sampler)
        self._sample = getattr(sample, "__wrapped__", sample)
        noise = torch.randn(1, *pipeline.sample_shape, generator=generator)
        self.noise = nn.Parameter(noise.to(pipeline.device))

    def parameters(self, recurse: bool = True):
        """Only the noise is optimised; the diffusion model stays frozen."""
        return iter([self.noise])

    def normalised_noise(self) -> torch.Tensor:
        """z rescaled to norm sqrt(n), the typical norm of n-dimensional standard Gaussian noise."""
        return self.noise * (math.sqrt(self.noise.numel()) / self.noise.norm())

    def unclamped(self) -> torch.Tensor:
        """The sampled, decoded image mapped to [0, 1] before clamping (what the range loss sees)."""
        x = self.normalised_noise() * self.sigmas[0]
        x = self._sample(self.denoiser, x, self.sigmas)  # [1, C, s, s]
        return (self.pipeline.decode(x) + 1) / 2

    def render(self) -> torch.Tensor:
        """The image [1, 3, H, W] in [0, 1]."""
        return clamp_with_grad(self.unclamped())

    def init_from_image(self, image: torch.Tensor) -> None:
        """Not supported: starting from an image needs an exact sampler inversion (EDICT)."""
        raise no_init_image_error()

    def recipe(self) -> dict:
        """What `reproduce` needs besides the dream config: the model, its hash and the sampling."""
        from ..pipeline import SCHEDULE

        return {"model": self.pipeline.model_name, "model_hash": self.pipeline.model_hash,
                "prompt": self.prompt, "negative_prompt": self.negative_prompt,
                "steps": self.num_steps, "sampler": self.sampler,
                "sampler_options": dict(SCHEDULE), "guidance_scale": self.guidance_scale}
