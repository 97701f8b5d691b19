"""ControlNet as a denoiser wrapper: D'(x, sigma) adds ControlNets' residuals to the UNet's skips.

`ControlledDenoiser(denoiser, controls, sigmas)` is itself a denoiser, so every sampler, CFG
and inpainting get control unchanged. It wraps any denoiser that says what its network sees
(`control_inputs(x, sigma) -> (network input, timestep)`): our EDM denoiser (c_in x plus the
UNet's coordinate channels, c_noise) and the discrete eps/v adapters of Stable Diffusion
(x / sqrt(sigma^2 + 1), the continuous timestep); the residuals reach the network as diffusers'
`down_block_additional_residuals` / `mid_block_additional_residual`. Each control is one
ControlNet with its condition image, a scale and an active window. As in diffusers'
`control_guidance_start/end`, step i of N is controlled when i/N >= start and (i+1)/N <= end; the
step of an evaluation is read off its noise level in the schedule the sampler runs (Heun's second
evaluation at sigma_{i+1} counts as step i+1). Several controls add their scaled residuals, like diffusers' MultiControlNet. Where no
control is active (scale 0, outside every window) the wrapped denoiser runs alone, so the result
is the base model's, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, InputImageError


def check_control_settings(scale: float, start: float, end: float) -> None:
    """Refuse a negative or non-finite scale and a window outside 0 <= start <= end <= 1."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise ConfigError(f"must be a number >= 0, got {scale!r}", field="control_scale",
                          fix="0 turns the control off, 1 is full strength")
    for name, value in (("control_start", start), ("control_end", end)):
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ConfigError(f"must be a fraction in [0, 1], got {value!r}", field=name,
                              fix="give the window as fractions of the sampling steps")
    if start > end:
        raise ConfigError(f"starts at {start} after its end {end}", field="control_start",
                          fix="make --control-start <= --control-end")


@dataclass
class Control:
    """One ControlNet with its condition image [1 or B, C, H, W] in [0, 1], scale and window."""

    controlnet: Any
    image: torch.Tensor
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self):
        check_control_settings(self.scale, self.start, self.end)
        if self.image.ndim != 4:
            raise ConfigError(f"must be [B, C, H, W], got shape {tuple(self.image.shape)}",
                              field="control_image")

    def active_at(self, step: int, num_steps: int) -> bool:
        """Whether step `step` of `num_steps` lies in this control's window."""
        return not (step / num_steps < self.start or (step + 1) / num_steps > self.end)


class ControlledDenoiser:
    """A denoiser with ControlNets: the wrapped denoiser's UNet gets their residuals on its skips.

    `sigmas` is the schedule the sampler runs (with its final 0); it is needed only when a
    control's window is not the whole run.
    """

    def __init__(self, denoiser: Any, controls: Sequence[Control],
                 sigmas: torch.Tensor | None = None):
        if not callable(getattr(denoiser, "control_inputs", None)):
            raise ConfigError("control needs an imagesynth denoiser (EDMDenoiser or a discrete "
                              "eps/v adapter) that exposes its network input", field="denoiser")
        windowed = any((c.start, c.end) != (0.0, 1.0) for c in controls)
        if windowed and sigmas is None:
            raise ConfigError("a control window needs the sampling schedule", field="sigmas",
                              fix="pass the sigmas the sampler runs")
        self.denoiser, self.controls = denoiser, list(controls)
        self.sigmas = None if sigmas is None else sigmas.detach().float().cpu()

    def step_index(self, sigma: float) -> int:
        """The schedule step whose noise level is at or above `sigma` (nearest from above)."""
        levels = self.sigmas[:-1]
        above = (levels >= sigma * (1 - 1e-6)).nonzero()
        return int(above[-1]) if len(above) else 0

    def weights(self, sigma: torch.Tensor) -> list[list[float]]:
        """Per control, per sample: its scale where it is active at that sample's sigma, else 0."""
        values = sigma.detach().float().cpu().tolist()
        if self.sigmas is None:
            return [[c.scale] * len(values) for c in self.controls]
        num_steps = len(self.sigmas) - 1
        steps = [self.step_index(v) for v in values]
        return [[c.scale if c.active_at(step, num_steps) else 0.0 for step in steps]
                for c in self.controls]

    def residuals(self, x: torch.Tensor, sigma: torch.Tensor, weights: list[list[float]],
                  cond: dict[str, Any]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Sum over the active controls of weight x (down residuals, mid residual)."""
        from ..nets.controlnet import controlnet_residuals

        network_input, timestep = self.denoiser.control_inputs(x, sigma)
        # SDXL's pooled text and size conditioning go to its ControlNet as to its UNet.
        added = ({"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
                 if cond.get("text_embeds") is not None else None)
        down_total: list[torch.Tensor] | None = None
        mid_total = None
        for control, per_sample in zip(self.controls, weights):
            if not any(per_sample):
                continue
            image = control.image.to(device=x.device, dtype=x.dtype)
            if image.shape[0] == 1 and x.shape[0] > 1:
                image = image.expand(x.shape[0], -1, -1, -1)
            down, mid = controlnet_residuals(
                control.controlnet, network_input, timestep, cond["encoder_hidden_states"],
                cond.get("encoder_attention_mask"), image, added_cond_kwargs=added)
            # One scale for the batch multiplies by a number, as diffusers' conditioning_scale does.
            weight: float | torch.Tensor = per_sample[0] if len(set(per_sample)) == 1 else \
                torch.tensor(per_sample, dtype=mid.dtype, device=x.device)[:, None, None, None]
            down = [d * weight for d in down]
            mid = mid * weight
            if down_total is None:
                down_total, mid_total = down, mid
            else:
                down_total = [a + b for a, b in zip(down_total, down)]
                mid_total = mid_total + mid
        return tuple(down_total), mid_total

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        """Controlled denoised estimate; the base denoiser alone where no control is active."""
        weights = self.weights(sigma)
        if not any(any(per_sample) for per_sample in weights):
            return self.denoiser(x, sigma, **cond)
        down, mid = self.residuals(x, sigma, weights, cond)
        return self.denoiser(x, sigma, **cond, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid)


def control_image_tensor(image: Image.Image, size: int, field: str = "control_image"
                         ) -> torch.Tensor:
    """A condition map as [1, 3, size, size] in [0, 1]; a square map of another size is resized
    with nearest neighbours (a map's colour codes and 1-px lines stay exact); another aspect is
    refused, naming the expected size."""
    width, height = image.size
    if (width, height) != (size, size):
        if width != height:
            raise InputImageError(f"is {width}x{height}, the model needs a square {size}x{size} "
                                  "map", field=field,
                                  fix=f"pass a {size}x{size} map (square maps are resized)")
        image = image.resize((size, size), Image.Resampling.NEAREST)
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()
