"""`imagesynth interpolate`: walks through a family's latent space, and latent arithmetic.

Endpoints are seeds (the latent that seed draws), prompts (for a conditional GAN: the same z
under the other caption) or image files (encoded: the VAE's posterior mean, the flow's exact
eps, a GAN inversion). Frames decode lerp or slerp between the two latents. With `--add` /
`--subtract` the walk instead moves from one endpoint along a direction found from captions:
the mean latent of data-set images whose captions contain the `add` phrase minus the mean of
those whose captions contain the `subtract` phrase (latent arithmetic, seed 000).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError

LATENT_FAMILIES = ("vae", "gan", "flow")
MAX_FRAMES = 256
#: images per phrase that estimate a latent direction
DIRECTION_IMAGES = 256


@dataclass(frozen=True)
class InterpolateConfig:
    """What `imagesynth interpolate` takes."""

    model: str
    start: str
    end: str | None = None
    frames: int = 16
    slerp: bool = False
    seed: int = 0  # z for prompt endpoints
    prompt: str | None = None  # a conditional GAN's caption for seed/image endpoints
    truncation: float = 1.0
    add: str | None = None
    subtract: str | None = None
    data: str | None = None
    strength: float = 1.0

    def __post_init__(self):
        if not 2 <= self.frames <= MAX_FRAMES:
            raise ConfigError(f"must be between 2 and {MAX_FRAMES}, got {self.frames}",
                              field="frames")
        arithmetic = self.add is not None or self.subtract is not None
        if arithmetic and (self.add is None or self.subtract is None or self.data is None):
            raise ConfigError("latent arithmetic needs --add, --subtract and --data", field="add",
                              fix='e.g. --add "on the left" --subtract "on the right" --data DIR')
        if arithmetic == (self.end is not None):
            raise ConfigError("give an end point B, or --add/--subtract, not both or neither",
                              field="end", fix="imagesynth interpolate --model M A B")
        if not 0 < self.truncation <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.truncation}", field="truncation")


def _condition(model, family: str, prompt: str | None):
    if family == "gan" and model.config.condition_dim > 0:
        if prompt is None:
            raise ConfigError("this GAN is conditioned on text", field="prompt",
                              fix='pass --prompt "a red circle" (or prompts as end points)')
        return model.condition_for([prompt])
    if prompt is not None:
        raise ConfigError(f"this {family} model is unconditional", field="prompt",
                          fix="leave out --prompt")
    return None


def _endpoint(model, family: str, spec: str, config: InterpolateConfig) -> torch.Tensor:
    """The latent [1, ...] a seed, an image file or (GAN) a prompt stands for."""
    from ..diffusion.noise import generators_from_seeds
    from ..io.images import open_image

    if spec.isdigit():
        generators = generators_from_seeds([int(spec)])
        if family == "gan":
            return model.latent(1, generators, _condition(model, family, config.prompt),
                                config.truncation)
        if family == "vae":
            return model.latent(1, generators)
        return torch.randn(1, model.latent_dim, generator=generators[0])
    path = Path(spec)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") or path.is_file():
        image = open_image(path, mode="RGB", field="start")
        if image.size != (model.image_size, model.image_size):
            image = image.resize((model.image_size, model.image_size))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        if family == "gan":
            return model.encode(x, _condition(model, family, config.prompt))
        return model.encode(x)
    if family != "gan" or model.config.condition_dim == 0:
        raise ConfigError(f"{spec!r} is neither a seed nor an image file", field="start",
                          fix="pass a seed (an integer) or a PNG/JPEG/WEBP file")
    generators = generators_from_seeds([config.seed])
    return model.latent(1, generators, model.condition_for([spec]), config.truncation)


def _direction(model, family: str, config: InterpolateConfig) -> torch.Tensor:
    """Mean latent of captions with `add` minus with `subtract`, from the data set's images."""
    from ..data.folder import CaptionedImageFolder

    folder = CaptionedImageFolder(config.data, resolution=model.image_size)
    means = []
    for phrase, name in ((config.add, "add"), (config.subtract, "subtract")):
        rows = [i for i, item in enumerate(folder.items) if phrase in item.caption]
        if not rows:
            raise DataError(f"no caption in {config.data} contains {phrase!r}", field=name,
                            fix="pick a phrase the data's captions use")
        rows = rows[:DIRECTION_IMAGES]
        if family == "gan":
            captions = [folder.items[i].caption for i in rows]
            latents = model.mean_w(model.condition_for(captions))
        else:
            images = torch.stack([folder[i]["image"] for i in rows])
            latents = torch.cat([model.encode(images[j:j + 64]) for j in range(0, len(rows), 64)])
        means.append(latents.mean(dim=0, keepdim=True))
    return means[0] - means[1]


def interpolate(config: InterpolateConfig, model=None) -> tuple[list, dict]:
    """Frames (PIL) of the walk and the recipe that describes it."""
    from .. import __version__
    from ..pipeline import _to_pil
    from ..registry import Registry
    from .sampling import family_of, load_family

    family = family_of(config.model)
    if family not in LATENT_FAMILIES:
        raise ConfigError(f"a {family} model has no continuous latent to walk through",
                          field="model", fix=f"use a {', '.join(LATENT_FAMILIES)} model")
    model = model if model is not None else load_family(config.model)
    start = _endpoint(model, family, config.start, config)
    if config.end is not None:
        end = _endpoint(model, family, config.end, config)
    else:
        end = start + config.strength * _direction(model, family, config)
    from ..metrics.ppl import lerp, slerp

    ts = np.linspace(0.0, 1.0, config.frames)
    mix = slerp if config.slerp else lerp
    shape = start.shape[1:]  # the PPL helpers interpolate rows of flat latents
    latents = torch.cat([mix(start.flatten(1), end.flatten(1), float(t)) for t in ts])
    latents = latents.view(-1, *shape)
    with torch.no_grad():
        frames = _to_pil(model.decode(latents))
    recipe = {"kind": "interpolate", "family": family, "model": config.model,
              "model_hash": Registry().get(config.model).weights_sha256,
              "interpolate": {k: v for k, v in config.__dict__.items()},
              "versions": {"imagesynth": __version__, "torch": torch.__version__}}
    return frames, recipe
