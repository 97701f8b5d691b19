"""InstructPix2Pix's dual classifier-free guidance as a denoiser wrapper (Brooks et al. 2023).

Eq. 3 of the paper, on the denoised estimate:

    D = D(∅, ∅) + s_I · (D(c_I, ∅) − D(∅, ∅)) + s_T · (D(c_I, c_T) − D(c_I, ∅))

where c_I is the source image and c_T the instruction. The paper writes it on the predicted
noise; since eps = (x − D) / sigma is affine in D and the weights (1 − s_I, s_I − s_T, s_T)
sum to one, the two forms give the same sampler step. s_I = 1 is ordinary classifier-free guidance
with the image always given; s_I = s_T = 0 is the unconditional model. The wrapper is itself a
denoiser, so every sampler gets it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError

#: the keyword under which the source image reaches the network (`nets.unet`)
SOURCE_KEY = "source"


def check_scale(value: float, field: str) -> float:
    """A guidance scale must be a finite number >= 0; returns it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < 0:
        raise ConfigError(f"must be a number >= 0, got {value!r}", field=field,
                          fix="0 ignores that condition, 1 is plain conditioning; "
                              "image guidance about 1.5 and guidance 3-7 are typical")
    return float(value)


class InstructPix2PixGuidance:
    """Dual guidance over the source image (`image_guidance_scale` s_I) and the instruction
    (`guidance_scale` s_T).

    `cond` / `uncond` are the instruction's and the empty instruction's keyword arguments for the
    inner denoiser (same keys); `source` [B or 1, C, H, W] is the source image in the network's
    range and `no_source` the "no image" input (zeros, as in training). Branches whose weight is
    zero are skipped (their term is exactly zero); the others run as one stacked batch.
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], cond: dict[str, Any],
                 uncond: dict[str, Any], source: torch.Tensor, image_guidance_scale: float,
                 guidance_scale: float, no_source: torch.Tensor | None = None):
        self.image_guidance_scale = check_scale(image_guidance_scale, "image_guidance")
        self.guidance_scale = check_scale(guidance_scale, "guidance")
        if set(cond) != set(uncond):
            raise ConfigError(f"keys differ: cond {sorted(cond)} vs uncond {sorted(uncond)}",
                              field="uncond", fix="give both branches the same fields")
        if SOURCE_KEY in cond:
            raise ConfigError("the source image is given separately", field="cond",
                              fix="pass it as `source`, not inside cond")
        self.denoiser, self.cond, self.uncond = denoiser, cond, uncond
        self.source = source
        self.no_source = torch.zeros_like(source) if no_source is None else no_source

    def _run(self, x: torch.Tensor, sigma: torch.Tensor,
             branches: list[tuple[dict[str, Any], torch.Tensor]]) -> list[torch.Tensor]:
        """Denoise x under each (text condition, source) branch, stacked when the tensors allow."""
        batch = x.shape[0]
        sources = [source.expand(batch, -1, -1, -1) for _, source in branches]
        stackable = all(isinstance(c[k], torch.Tensor) and c[k].shape == branches[0][0][k].shape
                        for c, _ in branches for k in c)
        if len(branches) == 1 or not stackable:
            return [self.denoiser(x, sigma, **c, **{SOURCE_KEY: s})
                    for (c, _), s in zip(branches, sources)]
        stacked = {k: torch.cat([c[k] for c, _ in branches]) for k in branches[0][0]}
        n = len(branches)
        denoised = self.denoiser(torch.cat([x] * n), torch.cat([sigma] * n), **stacked,
                                 **{SOURCE_KEY: torch.cat(sources)})
        return list(denoised.chunk(n))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        """Guided denoised estimate (eq. 3); extra keyword arguments are ignored (conditions
        are bound)."""
        s_I, s_T = self.image_guidance_scale, self.guidance_scale
        # a branch is needed when eq. 3 gives it a non-zero weight (or uses it in a difference)
        need_neither, need_image, need_full = s_I != 1.0, s_I != 0.0 or s_T != 0.0, s_T != 0.0
        branches = {name: branch for name, branch, needed in (
            ("neither", (self.uncond, self.no_source), need_neither),
            ("image", (self.uncond, self.source), need_image),
            ("full", (self.cond, self.source), need_full)) if needed}
        D = dict(zip(branches, self._run(x, sigma, list(branches.values()))))
        if not need_neither:  # s_I = 1: ordinary CFG on the instruction, the image given
            return D["image"] + s_T * (D["full"] - D["image"]) if need_full else D["image"]
        result = D["neither"]
        if need_image:
            result = result + s_I * (D["image"] - D["neither"])
        if need_full:
            result = result + s_T * (D["full"] - D["image"])
        return result
