"""Instruction editing with a trained instruction model: source image + instruction -> image.

`edit_image` samples from noise with the source image as the model's extra input, under
InstructPix2Pix's dual guidance (`diffusion/instruct.py`), one seeded generator per image. Each
image carries its recipe (kind "edit": instruction, both guidance scales, seed, model hash and
the source image's hash), and `replay_edit` regenerates it from the recipe and the same source
image, which `imagesynth reproduce IMAGE --init-image SOURCE` uses.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .errors import ConfigError, InputImageError, UsageError
from .pipeline import (SCHEDULE, DiffusionPipeline, GenerationResult, ImageInput,
                       _read_input_image, _to_pil, _to_tensor, _versions)

MAX_INSTRUCTION_CHARS = 8192
RECIPE_KIND = "edit"


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass(frozen=True)
class EditConfig:
    """Everything `imagesynth edit` takes (the studio can build the same from JSON)."""

    image: str = field(metadata=_help("Source image to edit (the model's size).", kind="image"))
    instruction: str = field(metadata=_help('What to change, e.g. "make the circle blue".'))
    model: str = field(metadata=_help("Instruction model (from `imagesynth train instruct`)."))
    seed: int = field(default=0, metadata=_help("Seed of the first image; image i uses seed + i."))
    n: int = field(default=1, metadata=_help("Number of images."))
    steps: int | None = field(default=None, metadata=_help("Sampler steps (model default)."))
    sampler: str | None = field(default=None, metadata=_help("Sampler (model default)."))
    guidance: float | None = field(default=None, metadata=_help(
        "Instruction guidance s_T >= 0 (model default)."))
    image_guidance: float | None = field(default=None, metadata=_help(
        "Source-image guidance s_I >= 0 (model default, about 1.5)."))

    def __post_init__(self):
        check_instruction(self.instruction)
        if not self.model.strip():
            raise ConfigError("is empty", field="model",
                              fix="pass the model folder `imagesynth train instruct` wrote")
        if not 0 <= self.seed < 2 ** 63:
            raise ConfigError(f"must be in [0, 2^63), got {self.seed}", field="seed")
        if not 1 <= self.n <= 64:
            raise ConfigError(f"must be between 1 and 64, got {self.n}", field="n")
        if self.steps is not None and not 1 <= self.steps <= 1000:
            raise ConfigError(f"must be between 1 and 1000, got {self.steps}", field="steps")
        from .diffusion.instruct import check_scale

        for name in ("guidance", "image_guidance"):
            if getattr(self, name) is not None:
                check_scale(getattr(self, name), name)


def check_instruction(instruction: str) -> str:
    """Refuse an empty or oversized instruction (one line naming the field)."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ConfigError("the instruction is empty", field="instruction",
                          fix='say what to change, e.g. "make the circle blue"')
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise ConfigError(f"is {len(instruction)} characters, over the "
                          f"{MAX_INSTRUCTION_CHARS}-character limit", field="instruction",
                          fix="shorten the instruction")
    return instruction


def require_instruct_model(pipe: DiffusionPipeline) -> dict:
    """The model's `instruct` settings; a ConfigError naming `model` for any other model."""
    from .families.instruct import is_instruct_config

    if not is_instruct_config(pipe.config):
        raise ConfigError(f"{pipe.model_name!r} is not an instruction model (it reads no source "
                          "image)", field="model",
                          fix="train one with `imagesynth train instruct --model "
                              f"{pipe.model_name} --data TRIPLES`")
    return pipe.config["instruct"]


def read_source(pipe: DiffusionPipeline, image: ImageInput) -> tuple[torch.Tensor, str]:
    """The source image as [1, 3, S, S] in [-1, 1] and the SHA-256 of its decoded RGB pixels."""
    picture, digest = _read_input_image(image, "RGB", "image")
    if picture.size != (pipe.image_size, pipe.image_size):
        raise InputImageError(f"the source image is {picture.size[0]}x{picture.size[1]}, the "
                              f"model edits {pipe.image_size}x{pipe.image_size} images",
                              field="image",
                              fix=f"resize it to {pipe.image_size}x{pipe.image_size} first")
    return _to_tensor(picture).to(pipe.device) * 2 - 1, digest


def instruction_conditions(pipe: DiffusionPipeline, instruction: str
                           ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(instruction, empty instruction) keyword arguments, padded to one token length."""
    states, mask = pipe.encode_prompts([instruction])
    empty_states, empty_mask = pipe.encode_prompts([""])
    length = max(states.shape[1], empty_states.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1]))  # noqa: E731
    pad_mask = lambda m: torch.nn.functional.pad(m, (0, length - m.shape[1]))  # noqa: E731
    return ({"encoder_hidden_states": pad(states), "encoder_attention_mask": pad_mask(mask)},
            {"encoder_hidden_states": pad(empty_states),
             "encoder_attention_mask": pad_mask(empty_mask)})


@torch.no_grad()
def edit_image(pipe: DiffusionPipeline, image: ImageInput, instruction: str, *,
               seed: int | list[int] = 0, num_images: int = 1, num_steps: int | None = None,
               sampler: str | None = None, guidance_scale: float | None = None,
               image_guidance_scale: float | None = None,
               callback: Callable | None = None) -> GenerationResult:
    """Edit `image` as `instruction` says: one image per seed (seed, seed+1, ... for
    `num_images`), each computed alone so it never depends on its batch."""
    from .diffusion import PerSampleDenoiser, get_sampler, randn_like_per_sample
    from .diffusion.instruct import InstructPix2PixGuidance, check_scale
    from .diffusion.noise import generators_from_seeds

    settings = require_instruct_model(pipe)
    check_instruction(instruction)
    seeds = list(seed) if isinstance(seed, list) else [seed + i for i in range(num_images)]
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2 ** 63
                        for s in seeds):
        raise ConfigError("seeds must be integers in [0, 2^63)", field="seed")
    num_steps = pipe.default_steps if num_steps is None else num_steps
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"must be an integer >= 1, got {num_steps!r}", field="steps")
    sampler_name = sampler or pipe.default_sampler
    s_T = check_scale(settings.get("default_guidance", pipe.default_guidance)
                      if guidance_scale is None else guidance_scale, "guidance")
    s_I = check_scale(settings.get("default_image_guidance", 1.5)
                      if image_guidance_scale is None else image_guidance_scale, "image_guidance")
    sample = get_sampler(sampler_name)
    source, source_hash = read_source(pipe, image)
    cond, uncond = instruction_conditions(pipe, instruction)
    guided = InstructPix2PixGuidance(pipe.denoiser, cond, uncond, source, s_I, s_T)
    denoiser = guided if len(seeds) == 1 else PerSampleDenoiser([guided] * len(seeds))
    generators = generators_from_seeds(seeds)
    sigmas = pipe.sigmas(num_steps)
    channels, side, _ = pipe.sample_shape
    template = torch.empty(len(seeds), channels, side, side, device=pipe.device)
    x = randn_like_per_sample(template, generators) * sigmas[0]
    result = sample(denoiser, x, sigmas, generator=generators, callback=callback)
    images = _to_pil(pipe._decode(result))
    common = {"kind": RECIPE_KIND, "prompt": instruction, "instruction": instruction,
              "steps": num_steps, "sampler": sampler_name, "sampler_options": dict(SCHEDULE),
              "guidance_scale": s_T, "image_guidance_scale": s_I,
              "size": [pipe.image_size, pipe.image_size], "source_image_hash": source_hash,
              "model": pipe.model_name, "model_hash": pipe.model_hash, "versions": _versions(),
              "device": str(pipe.device), "dtype": "float32",
              "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds")}
    return GenerationResult(images, [{**common, "seed": s} for s in seeds])


def edit(config: EditConfig, *, pipe: DiffusionPipeline | None = None,
         callback: Callable | None = None) -> GenerationResult:
    """Run one edit job from its typed config."""
    if pipe is None:
        from .api import load

        pipe = load(config.model)
    return edit_image(pipe, config.image, config.instruction, seed=config.seed,
                      num_images=config.n, num_steps=config.steps, sampler=config.sampler,
                      guidance_scale=config.guidance, image_guidance_scale=config.image_guidance,
                      callback=callback)


def replay_edit(recipe: dict, source: ImageInput | None, pipe_loader=None,
                on_warning: Callable[[str], None] | None = None):
    """Regenerate an edited image from its recipe and source image; returns (image, recipe)."""
    if source is None:
        raise UsageError("this image was edited from a source image; pass it with --init-image",
                         field="--init-image")
    if pipe_loader is None:
        from .api import load as pipe_loader
    pipe = pipe_loader(recipe["model"])
    if pipe.model_hash != recipe.get("model_hash") and on_warning is not None:
        on_warning("the model's weights differ from the recipe's model hash")
    result = edit_image(pipe, source, recipe["instruction"], seed=recipe["seed"],
                        num_steps=recipe["steps"], sampler=recipe["sampler"],
                        guidance_scale=recipe["guidance_scale"],
                        image_guidance_scale=recipe["image_guidance_scale"])
    if result.recipes[0]["source_image_hash"] != recipe.get("source_image_hash"):
        raise InputImageError("the given file is not the recipe's source image (its pixels' "
                              "SHA-256 differs)", field="init_image",
                              fix="pass the image that was edited")
    return result.images[0], result.recipes[0]

