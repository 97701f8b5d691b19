"""`imagesynth sample` for every family: one typed config, per-seed images, recipes to replay.

Each family is loaded behind the family interface (`families.base`) and asked for images with
one generator per seed, so image i depends only on seed i whatever the batch. Options that only
one family understands (truncation for a GAN, the prior for a VAE, top-k for the autoregressive
model...) are refused, naming the field, when given to a family that would ignore them.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..config import from_dict, to_dict
from ..errors import ConfigError, ModelNotFoundError

FAMILIES = ("vae", "gan", "flow", "ar", "diffusion")
#: which families take each family-specific option (and its neutral default)
OPTION_FAMILIES = {"truncation": (("gan",), 1.0), "prior": (("vae",), "mixture"),
                   "temperature": (("vae", "flow", "ar"), 1.0), "top_k": (("ar",), None),
                   "top_p": (("ar",), None), "guidance": (("ar", "diffusion"), None),
                   "steps": (("diffusion",), None), "sampler": (("diffusion",), None)}
MAX_SAMPLES = 1024


@dataclass(frozen=True)
class SampleConfig:
    """What `imagesynth sample` takes; stored in every image's recipe."""

    model: str
    n: int = 4
    seed: int = 0
    prompt: str | None = None
    truncation: float = 1.0
    temperature: float = 1.0
    prior: str = "mixture"
    top_k: int | None = None
    top_p: float | None = None
    guidance: float | None = None
    steps: int | None = None
    sampler: str | None = None

    def __post_init__(self):
        if not 1 <= self.n <= MAX_SAMPLES:
            raise ConfigError(f"must be between 1 and {MAX_SAMPLES}, got {self.n}", field="n")
        if not 0 <= self.seed < 2 ** 63 - MAX_SAMPLES:
            raise ConfigError(f"must be a non-negative integer, got {self.seed}", field="seed")
        if self.prompt is not None and not self.prompt.strip():
            raise ConfigError("is empty", field="prompt", fix="leave it out or describe the image")
        if not 0 < self.truncation <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.truncation}", field="truncation",
                              fix="1 keeps the full variety; 0.5-0.8 trades variety for quality")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"must be > 0, got {self.temperature}", field="temperature")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"must be >= 1, got {self.top_k}", field="top_k")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.top_p}", field="top_p")
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ConfigError(f"must be >= 0, got {self.guidance}", field="guidance")


def family_of(spec: str) -> str:
    """The family of a registered model or folder ("vae" for a vector autoencoder)."""
    from ..registry import Registry

    config = Registry().get(str(spec)).config()
    family = config.get("family", "unknown")
    if family == "autoencoder":
        if config.get("autoencoder", {}).get("architecture") != "vector":
            raise ModelNotFoundError(f"{spec!r} is a latent-grid autoencoder, not a generator",
                                     field="model", fix="use a vector VAE such as shapes-v32")
        return "vae"
    if family not in FAMILIES:
        raise ModelNotFoundError(f"{spec!r} is a {family!r} model, not a generator",
                                 field="model", fix=f"use a model of a family in {FAMILIES}")
    return family


def load_family(spec: str, device: str | torch.device = "cpu"):
    """Load any generator model behind the family interface."""
    family = family_of(spec)
    if family == "vae":
        from .autoencoder import load_vae

        return load_vae(spec, device)
    if family == "gan":
        from .gan import load_gan

        return load_gan(spec, device)
    if family == "flow":
        from .flow import load_flow

        return load_flow(spec, device)
    if family == "ar":
        from .ar import load_ar

        return load_ar(spec, device)
    from .diffusion import DiffusionFamily

    return DiffusionFamily.load(spec, device)


def check_options(config: SampleConfig, family: str) -> None:
    """Refuse options this family would silently ignore."""
    for name, (families, neutral) in OPTION_FAMILIES.items():
        if getattr(config, name) != neutral and family not in families:
            raise ConfigError(f"applies to {'/'.join(families)} models, not to this {family} "
                              "model", field=name, fix=f"leave out --{name.replace('_', '-')}")


def _condition(model, family: str, prompt: str | None, n: int):
    """The family's conditioning for `n` copies of `prompt` (None for unconditional families)."""
    conditional = family in ("diffusion", "ar") or (
        family == "gan" and model.config.condition_dim > 0)
    if prompt is None:
        if conditional and family != "ar":
            raise ConfigError(f"this {family} model is conditioned on text", field="prompt",
                              fix='pass --prompt "a red circle"')
        return None
    if not conditional:
        raise ConfigError(f"this {family} model is unconditional", field="prompt",
                          fix="leave out --prompt")
    if family == "gan":
        return model.condition_for([prompt] * n)
    return [prompt] * n


def family_options(config: SampleConfig, family: str) -> dict[str, Any]:
    """The keyword options `model.sample` takes for this family."""
    names = [name for name, (families, _) in OPTION_FAMILIES.items() if family in families]
    renames = {"ar": {"guidance": "guidance_scale"}}.get(family, {})
    return {renames.get(name, name): getattr(config, name) for name in names
            if getattr(config, name) is not None}


def sample_images(config: SampleConfig, model=None) -> tuple[list, list[dict]]:
    """Images (PIL) for seeds seed..seed+n-1 and one recipe per image."""
    from ..diffusion.noise import generators_from_seeds
    from ..pipeline import _to_pil
    from ..registry import Registry

    family = family_of(config.model)
    check_options(config, family)
    model = model if model is not None else load_family(config.model)
    seeds = [config.seed + i for i in range(config.n)]
    condition = _condition(model, family, config.prompt, config.n)
    with torch.no_grad():
        images = model.sample(config.n, generators_from_seeds(seeds), condition,
                              **family_options(config, family))
    if not torch.isfinite(images).all():
        from ..errors import NumericError

        raise NumericError("the model produced NaN or Inf", field="model",
                           fix="retrain or re-export the model")
    recipes = [recipe_for(config, family, seed, Registry().get(config.model).weights_sha256)
               for seed in seeds]
    return _to_pil(images), recipes


def recipe_for(config: SampleConfig, family: str, seed: int, model_hash: str | None) -> dict:
    """The recipe of one sampled image (replayed by `imagesynth reproduce`)."""
    from .. import __version__

    single = dataclasses.replace(config, n=1, seed=seed)
    return {"kind": "sample", "family": family, "model": config.model, "model_hash": model_hash,
            "prompt": config.prompt or "", "seed": seed, "sampler": f"sample-{family}",
            "sample": to_dict(single),
            "versions": {"imagesynth": __version__, "torch": torch.__version__},
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}


def replay(recipe: dict):
    """Regenerate the image a `kind: sample` recipe describes; refuse changed weights."""
    from ..errors import IntegrityError
    from ..registry import Registry

    config = from_dict(SampleConfig, recipe["sample"], prefix="sample.")
    expected = recipe.get("model_hash")
    if expected and Registry().get(config.model).weights_sha256 != expected:
        raise IntegrityError(f"model {config.model!r} is not the one that made this image "
                             "(weights SHA-256 differs)", field="model",
                             fix="install the exact model the recipe names")
    images, _ = sample_images(config)
    return images[0]
