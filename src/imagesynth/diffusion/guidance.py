"""Guidance as denoiser wrappers: classifier-free guidance, CLIP guidance, clamping and thresholding.

Each wrapper takes a denoiser and is itself a denoiser, so every sampler gets every guidance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..scorers import Scorer
from .denoisers import append_dims


class ClassifierFreeGuidance:
    """D = D_u + w (D_c - D_u) (Ho & Salimans 2022); the negative prompt is the unconditional branch.

    `cond` / `uncond` are keyword arguments for the inner denoiser (e.g. `encoder_hidden_states`).
    Both branches run as one doubled batch when their tensors stack; at scale 1 the unconditional
    pass is skipped. `guidance_rescale` (Lin et al. 2023, Eq. 15-16) is applied to the implied noise
    eps = (x - D) / sigma, exactly as diffusers' `rescale_noise_cfg`.
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], cond: dict[str, Any], uncond: dict[str, Any],
                 guidance_scale: float, guidance_rescale: float = 0.0):
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale)):
            raise ConfigError(f"must be a finite number, got {guidance_scale!r}", field="guidance_scale")
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ConfigError(f"must be in [0, 1], got {guidance_rescale!r}", field="guidance_rescale",
                              fix="use 0 (off) or about 0.7 as the paper suggests")
        if set(cond) != set(uncond):
            raise ConfigError(f"keys differ: cond {sorted(cond)} vs uncond {sorted(uncond)}", field="uncond",
                              fix="give the negative prompt the same conditioning fields as the prompt")
        self.denoiser, self.cond, self.uncond = denoiser, cond, uncond
        self.guidance_scale, self.guidance_rescale = float(guidance_scale), float(guidance_rescale)

    def _both_branches(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stackable = all(isinstance(self.cond[k], torch.Tensor) and isinstance(self.uncond[k], torch.Tensor)
                        and self.cond[k].shape == self.uncond[k].shape for k in self.cond)
        if not stackable:
            return self.denoiser(x, sigma, **self.uncond), self.denoiser(x, sigma, **self.cond)
        doubled = {k: torch.cat([self.uncond[k], self.cond[k]]) for k in self.cond}
        denoised = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **doubled)
        return denoised.chunk(2)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        """Guided denoised estimate; extra keyword arguments are ignored (conditioning is bound)."""
        if self.guidance_scale == 1.0:
            return self.denoiser(x, sigma, **self.cond)
        D_u, D_c = self._both_branches(x, sigma)
        D = D_u + self.guidance_scale * (D_c - D_u)
        if self.guidance_rescale > 0:
            s = append_dims(sigma, x.ndim)
            eps_c, eps_cfg = (x - D_c) / s, (x - D) / s
            dims = list(range(1, x.ndim))
            eps_rescaled = eps_cfg * (eps_c.std(dim=dims, keepdim=True) / eps_cfg.std(dim=dims, keepdim=True))
            eps = self.guidance_rescale * eps_rescaled + (1 - self.guidance_rescale) * eps_cfg
            D = x - s * eps
        return D


class PerSampleDenoiser:
    """One denoiser per batch row, each run on its own row: an image never depends on its batch.

    CPU kernels pick their blocking by the batch size, so a UNet run on 8 rows and on 1 row
    differs in the last bits, and after 20 steps in a pixel or two. Running every image (with its
    own CFG pair) as its own call keeps "same seed, same bytes" true for any batch; on CPU the
    small UNets cost about as much per image either way.
    """

    def __init__(self, denoisers: list[Callable[..., torch.Tensor]]):
        self.denoisers = denoisers

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        if len(self.denoisers) != x.shape[0]:
            raise ConfigError(f"{len(self.denoisers)} denoisers for a batch of {x.shape[0]}",
                              field="x")
        return torch.cat([denoiser(x[i:i + 1], sigma[i:i + 1], **extra)
                          for i, denoiser in enumerate(self.denoisers)])


def clamp_denoised(denoiser: Callable[..., torch.Tensor], minimum: float = -1.0,
                   maximum: float = 1.0) -> Callable[..., torch.Tensor]:
    """Static thresholding: clip x0_hat to [minimum, maximum] (pixel range) at every step."""
    if not minimum < maximum:
        raise ConfigError(f"minimum {minimum} must be below maximum {maximum}", field="minimum")

    def clamped(x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        return denoiser(x, sigma, **cond).clamp(minimum, maximum)

    return clamped


def dynamic_threshold(denoiser: Callable[..., torch.Tensor], percentile: float = 0.995,
                      max_value: float = 1.0) -> Callable[..., torch.Tensor]:
    """Imagen dynamic thresholding (Saharia et al. 2022): s = quantile(|x0|, p) >= max_value, x0 <- clip(x0, -s, s) / s * max_value."""
    if not 0.0 < percentile <= 1.0:
        raise ConfigError(f"must be in (0, 1], got {percentile!r}", field="percentile")

    def thresholded(x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        x0 = denoiser(x, sigma, **cond)
        s = torch.quantile(x0.abs().flatten(1), percentile, dim=1).clamp(min=max_value)
        s = append_dims(s, x0.ndim)
        return x0.clamp(-s, s) / s * max_value

    return thresholded


def spherical_distance_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between normalised embeddings: 2 arcsin(|x - y| / 2)^2."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def make_cutouts(images: torch.Tensor, cut_size: int, num_cutouts: int, generator: torch.Generator,
                 cut_power: float = 1.0) -> torch.Tensor:
    """Random square crops resized to cut_size, [num_cutouts * B, C, cut_size, cut_size], cutout-major.

    Crop sizes and offsets are drawn once per call from `generator` and shared by the whole batch, so a
    sample's cutouts do not depend on which batch it is in.
    """
    side_y, side_x = images.shape[2:4]
    max_size, min_size = min(side_x, side_y), min(side_x, side_y, cut_size)
    cutouts = []
    for _ in range(num_cutouts):
        u = float(torch.rand([], generator=generator))
        size = int(u ** cut_power * (max_size - min_size) + min_size)
        offset_x = int(torch.randint(0, side_x - size + 1, (), generator=generator))
        offset_y = int(torch.randint(0, side_y - size + 1, (), generator=generator))
        crop = images[:, :, offset_y:offset_y + size, offset_x:offset_x + size]
        cutouts.append(F.adaptive_avg_pool2d(crop, cut_size))
    return torch.cat(cutouts)


class CLIPGuidance:
    """Steer sampling toward a prompt with the gradient of a CLIP spherical-distance loss.

    As in k-diffusion's `sample_clip_guided.py`: D'(x) = D(x) - s sigma^2 grad_x L(D(x)), where
    L is the mean spherical distance between the scorer's embeddings of cutouts of the denoised image
    and the prompt embedding. With `through_denoiser=False` the gradient is taken w.r.t. D(x) only,
    which skips back-propagation through the network (cheaper, less exact).
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], scorer: Scorer,
                 prompts: Sequence[str], guidance_scale: float,
                 generator: torch.Generator | Sequence[torch.Generator], *,
                 cut_size: int = 224, num_cutouts: int = 16, cut_power: float = 1.0,
                 to_image: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 through_denoiser: bool = True):
        """`generator` is one generator (cutouts shared by the batch, target = mean of the
        prompts' embeddings) or one per sample: then sample i gets its own cutouts from
        `generator[i]` and prompts[i] as its target, so a batch never changes an image."""
        if not isinstance(scorer, Scorer):
            raise ConfigError("must provide embed_text(list[str]) and embed_image(images)", field="scorer")
        if not prompts:
            raise ConfigError("needs at least one prompt", field="prompts")
        if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ConfigError(f"must be >= 0, got {guidance_scale!r}", field="clip_guidance_scale")
        if num_cutouts < 1 or cut_size < 1:
            raise ConfigError("num_cutouts and cut_size must be >= 1", field="num_cutouts")
        self.denoiser, self.scorer, self.generator = denoiser, scorer, generator
        self.per_sample = not isinstance(generator, torch.Generator)
        if self.per_sample and len(generator) != len(prompts):
            raise ConfigError(f"{len(generator)} generators for {len(prompts)} prompts",
                              field="prompts", fix="give one prompt per generator")
        with torch.no_grad():
            embedded = scorer.embed_text(list(prompts))
            self.target = F.normalize(embedded if self.per_sample
                                      else embedded.mean(0, keepdim=True), dim=-1)
        self.guidance_scale = guidance_scale
        self.cut_size, self.num_cutouts, self.cut_power = cut_size, num_cutouts, cut_power
        # Denoised pixels live in [-1, 1]; the scorer wants [0, 1]. Latent models pass a decoder here.
        self.to_image = to_image or (lambda x0: (x0 + 1) / 2)
        self.through_denoiser = through_denoiser

    def loss(self, denoised: torch.Tensor) -> torch.Tensor:
        """Per-sample guidance loss [B]: mean spherical distance of the cutouts' embeddings to the prompt."""
        if self.per_sample:
            return torch.cat([self._loss(denoised[i:i + 1], self.generator[i], self.target[i:i + 1])
                              for i in range(denoised.shape[0])])
        return self._loss(denoised, self.generator, self.target)

    def _loss(self, denoised: torch.Tensor, generator: torch.Generator,
              target: torch.Tensor) -> torch.Tensor:
        batch = denoised.shape[0]
        cutouts = make_cutouts(self.to_image(denoised), self.cut_size, self.num_cutouts, generator,
                               self.cut_power)
        embeddings = self.scorer.embed_image(cutouts)  # [num_cutouts * B, D]
        distances = spherical_distance_loss(embeddings, target.to(embeddings))
        return distances.view(self.num_cutouts, batch).mean(0)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        """Guided denoised estimate."""
        if self.guidance_scale == 0:
            return self.denoiser(x, sigma, **cond)
        with torch.enable_grad():
            if self.through_denoiser:
                x_in = x.detach().requires_grad_()
                denoised = self.denoiser(x_in, sigma, **cond)
                wrt = x_in
            else:
                with torch.no_grad():
                    denoised = self.denoiser(x, sigma, **cond)
                denoised = denoised.detach().requires_grad_()
                wrt = denoised
            # Sum over samples: each sample's gradient is that of its own loss.
            grad = torch.autograd.grad(self.loss(denoised).sum(), wrt)[0]
        return denoised.detach() - self.guidance_scale * append_dims(sigma, x.ndim) ** 2 * grad
