"""The diffusion family behind the family interface: the text-to-image pipeline, seed per image.

The engine, samplers and training live in `diffusion/`; this adapter lets `sample`,
`interpolate` and `compare` treat a diffusion model like any other generator.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

FAMILY = "diffusion"


class DiffusionFamily:
    """A loaded `DiffusionPipeline` as a generator: condition = one prompt per sample."""

    family = FAMILY
    has_latent = False

    def __init__(self, pipe):
        self.pipe = pipe
        self.image_size = pipe.image_size

    @classmethod
    def load(cls, spec: str, device: str | torch.device = "cpu") -> "DiffusionFamily":
        """Load by registry name or folder."""
        from ..pipeline import load_pipeline

        return cls(load_pipeline(spec, device=device))

    def sample(self, n: int, generators: Sequence[torch.Generator],
               condition: Sequence[str] | None = None, guidance: float | None = None,
               steps: int | None = None, sampler: str | None = None) -> torch.Tensor:
        """`n` images [n, 3, S, S] in [-1, 1] for prompts `condition`, one seeded run each."""
        # The pipeline seeds its own per-image generators; each given generator's seed is the
        # same seed, so image i still depends only on generators[i].
        seeds = [g.initial_seed() for g in generators]
        result = self.pipe(list(condition or [""] * n), seed=seeds, num_steps=steps,
                           sampler=sampler, guidance_scale=guidance)
        arrays = np.stack([np.asarray(image, dtype=np.float32) for image in result.images])
        return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1
