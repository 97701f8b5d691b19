"""The typed config of one text-to-image job and the calls the CLI and the studio share.

`imagesynth generate` builds a `GenerateConfig` from its flags and the studio builds the same
one from a JSON body, so both validate with the same messages and run the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .errors import ConfigError, InputImageError, UsageError

#: prompts longer than this are refused before tokenisation (the text encoders' own cap)
MAX_PROMPT_CHARS = 8192
MAX_IMAGES = 64
MAX_STEPS = 1000
SAMPLER_NAMES = ("euler", "heun", "euler_ancestral", "dpmpp_2m", "ddpm")


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass(frozen=True)
class GenerateConfig:
    """Everything `imagesynth generate` takes: text-to-image, img2img, inpainting, outpainting."""

    prompt: str = field(metadata=_help("What the image should show."))
    model: str = field(default="emoji", metadata=_help("Diffusion model: bundled/registered name."))
    negative: str = field(default="", metadata=_help("Negative prompt (what to steer away from)."))
    seed: int = field(default=0, metadata=_help("Seed of the first image; image i uses seed + i."))
    n: int = field(default=1, metadata=_help("Number of images."))
    steps: int | None = field(default=None, metadata=_help(
        "Sampler steps (model default if omitted)."))
    sampler: str | None = field(default=None, metadata=_help(
        "Sampler (model default if omitted).", choices=SAMPLER_NAMES))
    guidance: float | None = field(default=None, metadata=_help(
        "Classifier-free guidance scale >= 0 (model default if omitted)."))
    size: int | None = field(default=None, metadata=_help(
        "Image side in pixels: the training size for imagesynth models, any multiple of 8 for "
        "Stable Diffusion."))
    width: int | None = field(default=None, metadata=_help(
        "Image width (Stable Diffusion: any multiple of 8); give it with height."))
    height: int | None = field(default=None, metadata=_help(
        "Image height (Stable Diffusion: any multiple of 8); give it with width."))
    guidance_rescale: float = field(default=0.0, metadata=_help(
        "CFG rescale in [0, 1] (Lin et al. 2023; ~0.7 against over-exposure)."))
    clip_guidance: float = field(default=0.0, metadata=_help(
        "CLIP guidance scale >= 0 (0 = off); needs a CLIP model."))
    clip_model: str | None = field(default=None, metadata=_help(
        "CLIP for CLIP guidance: a bundled or registered CLIP name."))
    clip_cutouts: int = field(default=8, metadata=_help(
        "CLIP guidance: random cutouts scored per step (1-64)."))
    init_image: str | None = field(default=None, metadata=_help(
        "Start from this image (img2img).", kind="image"))
    strength: float = field(default=0.6, metadata=_help(
        "img2img: how much to change the init image, in (0, 1]."))
    mask: str | None = field(default=None, metadata=_help(
        "Inpainting mask (white = repaint), same size as the image.", kind="image"))
    mask_blur: float = field(default=0.0, metadata=_help(
        "Inpainting: blur radius of the mask edge, in pixels."))
    outpaint: tuple[int, int, int, int] | None = field(default=None, metadata=_help(
        "Outpainting: LEFT,TOP,RIGHT,BOTTOM borders to paint around the init image."))
    expand: bool = field(default=False, metadata=_help(
        "Rewrite the prompt into the model's training words first (recorded in the recipe)."))
    lora: tuple[str, ...] = field(default=(), metadata=_help(
        "LoRA files as FILE[:WEIGHT], stacked (weight 1 if omitted)."))
    control_image: tuple[str, ...] = field(default=(), metadata=_help(
        "ControlNet condition maps (layout, edges, scribble), one per ControlNet.",
        kind="images"))
    control_model: tuple[str, ...] = field(default=(), metadata=_help(
        "ControlNet model folders: one for all maps, or one per map."))
    control_scale: tuple[float, ...] = field(default=(), metadata=_help(
        "ControlNet scales >= 0: one for all, or one per map (default 1)."))
    control_start: tuple[float, ...] = field(default=(), metadata=_help(
        "Fraction of the steps where control starts: one for all, or one per map (default 0)."))
    control_end: tuple[float, ...] = field(default=(), metadata=_help(
        "Fraction of the steps where control ends: one for all, or one per map (default 1)."))

    def __post_init__(self):
        if not self.prompt.strip():
            raise ConfigError("the prompt is empty", field="prompt",
                              fix='describe the image, e.g. "a red circle"')
        for name in ("prompt", "negative"):
            if len(getattr(self, name)) > MAX_PROMPT_CHARS:
                raise ConfigError(f"is {len(getattr(self, name))} characters, over the "
                                  f"{MAX_PROMPT_CHARS}-character limit", field=name,
                                  fix="shorten the prompt")
        if not self.model.strip():
            raise ConfigError("is empty", field="model", fix="see `imagesynth models list`")
        if not 0 <= self.seed < 2 ** 63:
            raise ConfigError(f"must be in [0, 2^63), got {self.seed}", field="seed")
        if not 1 <= self.n <= MAX_IMAGES:
            raise ConfigError(f"must be between 1 and {MAX_IMAGES}, got {self.n}", field="n")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"must be between 1 and {MAX_STEPS}, got {self.steps}",
                              field="steps")
        if self.sampler is not None and self.sampler not in SAMPLER_NAMES:
            raise ConfigError(f"unknown sampler {self.sampler!r}", field="sampler",
                              fix=f"choose one of: {', '.join(SAMPLER_NAMES)}")
        if self.guidance is not None and not (math.isfinite(self.guidance)
                                              and self.guidance >= 0):
            raise ConfigError(f"must be a number >= 0, got {self.guidance}", field="guidance",
                              fix="0 ignores the prompt, 1 is plain conditioning, 2-5 is typical")
        if self.size is not None and not 1 <= self.size <= 4096:
            raise ConfigError(f"must be between 1 and 4096, got {self.size}", field="size")
        if (self.width is None) != (self.height is None):
            raise ConfigError("width and height go together", field="width" if self.width is None
                              else "height", fix="give both --width and --height, or --size")
        if self.width is not None:
            if self.size is not None:
                raise ConfigError("give --size or --width/--height, not both", field="size")
            for name in ("width", "height"):
                if not 1 <= getattr(self, name) <= 4096:
                    raise ConfigError(f"must be between 1 and 4096, got {getattr(self, name)}",
                                      field=name)
        if not (math.isfinite(self.guidance_rescale) and 0 <= self.guidance_rescale <= 1):
            raise ConfigError(f"must be in [0, 1], got {self.guidance_rescale}",
                              field="guidance_rescale", fix="0 is off; ~0.7 as the paper suggests")
        if not (math.isfinite(self.clip_guidance) and self.clip_guidance >= 0):
            raise ConfigError(f"must be a number >= 0, got {self.clip_guidance}",
                              field="clip_guidance", fix="0 turns CLIP guidance off")
        if self.clip_guidance and not self.clip_model:
            raise ConfigError("CLIP guidance needs a CLIP", field="clip_model",
                              fix="pass --clip-model NAME (e.g. shapes-clip)")
        if not 1 <= self.clip_cutouts <= 64:
            raise ConfigError(f"must be between 1 and 64, got {self.clip_cutouts}",
                              field="clip_cutouts")
        if not (math.isfinite(self.strength) and 0 < self.strength <= 1):
            raise ConfigError(f"must be in (0, 1], got {self.strength}", field="strength")
        if not (math.isfinite(self.mask_blur) and 0 <= self.mask_blur <= 64):
            raise ConfigError(f"must be between 0 and 64, got {self.mask_blur}", field="mask_blur")
        if self.mask is not None and self.init_image is None:
            raise ConfigError("a mask needs an init image to repaint", field="mask",
                              fix="pass --init-image with --mask")
        if self.lora:
            from .diffusion.lora import parse_lora_spec

            for spec in self.lora:
                parse_lora_spec(spec)
        self._control_settings()  # counts, scales, windows (one line naming the field)
        if self.outpaint is not None:
            if self.init_image is None or self.mask is not None:
                raise ConfigError("outpainting extends an init image and paints its own mask",
                                  field="outpaint", fix="pass --init-image and no --mask")
            if min(self.outpaint) < 0 or sum(self.outpaint) == 0:
                raise ConfigError("borders must be >= 0 and not all 0", field="outpaint",
                                  fix="e.g. 8,0,8,0 paints 8 pixels on the left and right")


    def controls(self, resolve: Callable[[str, str], Any] | None = None) -> list:
        """The ControlNets to apply, as `ControlInput`s (maps through `resolve`, if given)."""
        settings = self._control_settings()
        if not settings:
            return []
        from .families.controlnet import ControlInput  # imports diffusers: only when used

        return [ControlInput(resolve(image, "control_image") if resolve else image, model,
                             scale, start, end) for image, model, scale, start, end in settings]

    def _control_settings(self) -> list[tuple]:
        """(map, model, scale, start, end) per control image, checked without importing the
        ControlNet code (a studio validates every job it queues with this)."""
        count = len(self.control_image)
        options = {"control_model": self.control_model, "control_scale": self.control_scale,
                   "control_start": self.control_start, "control_end": self.control_end}
        if not count:
            given = [name for name, values in options.items() if values]
            if given:
                raise ConfigError("is set but no control image is given", field=given[0],
                                  fix="pass --control-image MAP.png")
            return []
        if not self.control_model:
            raise ConfigError("a control image needs a ControlNet", field="control_model",
                              fix="pass --control-model DIR (written by `imagesynth train "
                                  "controlnet`)")
        for name, values in options.items():
            if len(values) not in (0, 1, count):
                raise ConfigError(f"has {len(values)} values for {count} control images",
                                  field=name, fix="give one value for all, or one per image")
        from .diffusion.control import check_control_settings

        pick = lambda values, i, default: values[i if len(values) > 1 else 0] if values \
            else default  # noqa: E731
        settings = []
        for i, image in enumerate(self.control_image):
            scale, start = pick(self.control_scale, i, 1.0), pick(self.control_start, i, 0.0)
            end = pick(self.control_end, i, 1.0)
            check_control_settings(scale, start, end)
            settings.append((image, pick(self.control_model, i, None), scale, start, end))
        return settings


def parse_borders(text: str | None) -> tuple[int, int, int, int] | None:
    """"8,0,8,0" -> (8, 0, 8, 0) for --outpaint; "8" -> all four sides."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 4
    if len(values) != 4:
        raise ConfigError(f"{text!r} is not LEFT,TOP,RIGHT,BOTTOM", field="outpaint",
                          fix='write four integers such as "8,0,8,0"')
    return tuple(values)


def generate(config: GenerateConfig, *, pipe=None, callback: Callable | None = None,
             resolve_image: Callable[[str, str], Any] | None = None):
    """Run one generate job; `resolve_image(reference, field)` maps image fields to sources."""
    if pipe is None:
        from .api import load

        pipe = load(config.model)
    resolve = resolve_image or (lambda reference, _field: Path(reference))
    init = resolve(config.init_image, "init_image") if config.init_image else None
    mask = resolve(config.mask, "mask") if config.mask else None
    from .diffusion.lora import parse_lora_spec

    loras = [(spec.path, spec.weight) for spec in map(parse_lora_spec, config.lora)]
    return pipe(config.prompt, seed=config.seed, negative_prompt=config.negative,
                num_images=config.n, num_steps=config.steps, sampler=config.sampler,
                guidance_scale=config.guidance,
                size=(config.width, config.height) if config.width else config.size,
                init_image=init,
                strength=config.strength, mask=mask, mask_blur=config.mask_blur,
                outpaint=config.outpaint, callback=callback, expand=config.expand,
                loras=loras, controls=config.controls(resolve),
                guidance_rescale=config.guidance_rescale, clip_guidance=config.clip_guidance,
                clip_model=config.clip_model, clip_cutouts=config.clip_cutouts)


@dataclass(frozen=True)
class ReproduceReport:
    """Whether an image regenerated from its recipe equals the original, pixel for pixel."""

    identical: bool
    pixels_differ: int
    max_difference: int
    image: Image.Image
    recipe: dict

    def to_dict(self) -> dict:
        """JSON form (without the image)."""
        return {"identical": self.identical, "pixels_differ": self.pixels_differ,
                "max_difference": self.max_difference}


def compare_images(original: Image.Image, regenerated: Image.Image, recipe: dict
                   ) -> ReproduceReport:
    """Count the pixels where two RGB images differ."""
    a = np.asarray(original.convert("RGB"), dtype=np.int16)
    b = np.asarray(regenerated.convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        return ReproduceReport(False, int(a.shape[0] * a.shape[1]), 255, regenerated, recipe)
    difference = np.abs(a - b)
    changed = int((difference > 0).any(-1).sum())
    return ReproduceReport(changed == 0, changed, int(difference.max(initial=0)), regenerated,
                           recipe)


def _controls_from_recipe(entries: list[dict], images: list) -> list:
    """`ControlInput`s that replay a recipe's ControlNets with the given maps."""
    from .families.controlnet import ControlInput

    if len(images) != len(entries):
        raise UsageError(f"this image was made with {len(entries)} control image(s), "
                         f"{len(images)} given", field="--control-image",
                         fix="pass --control-image once per map, in the recipe's order")
    return [ControlInput(image, entry["model"], entry["scale"], entry["start"], entry["end"])
            for image, entry in zip(images, entries)]


def _clip_guidance_from_recipe(entry: dict | None) -> dict:
    """The pipeline's CLIP-guidance arguments from a recipe's `clip_guidance` entry."""
    if not entry:
        return {}
    return {"clip_guidance": entry["scale"], "clip_model": entry["model"],
            "clip_cutouts": entry["cutouts"]}


def reproduce_image(image: str | Path | bytes, *, init_image=None, mask=None, pipe_loader=None,
                    on_warning: Callable[[str], None] | None = None,
                    control_images: Sequence = ()) -> ReproduceReport:
    """Regenerate a PNG from its recipe (generate or dream) and compare the pixels;
    `control_images` are the recipe's ControlNet maps, in its order."""
    from .io.images import open_image
    from .io.pngmeta import read_recipe

    recipe = read_recipe(image)
    original = open_image(image, mode="RGB")
    if recipe.get("kind") == "dream":  # written by `imagesynth dream`: replay the optimisation
        from .guided import reproduce_from_recipe

        return compare_images(original, reproduce_from_recipe(recipe), recipe)
    if recipe.get("kind") == "edit-clip":  # written by `imagesynth edit-clip`: invert and edit
        from .guided.edit_clip import reproduce_edit_clip

        return compare_images(original, reproduce_edit_clip(recipe), recipe)
    if recipe.get("kind") == "sample":  # written by `imagesynth sample` (any family)
        from .families.sampling import replay

        return compare_images(original, replay(recipe), recipe)
    if recipe.get("kind") == "edit":  # written by `imagesynth edit`: the source is --init-image
        from .editing import replay_edit

        return compare_images(original, *replay_edit(recipe, init_image, pipe_loader, on_warning))
    if "seed" not in recipe or "model" not in recipe:
        raise InputImageError("the PNG has no imagesynth generation recipe", field="image",
                              fix="pass a PNG written by `imagesynth generate`")
    for name, given, key in (("--init-image", init_image, "init_image_hash"),
                             ("--mask", mask, "mask_hash")):
        if recipe.get(key) and given is None:
            raise UsageError(f"this image was made with an input image; pass {name}", field=name)
    loras = None
    if recipe.get("loras"):  # refused (one line) when a file is missing or changed
        from .diffusion.lora import lora_paths_from_recipe

        loras = lora_paths_from_recipe(recipe["loras"])  # the pipeline reads them
    controls = _controls_from_recipe(recipe.get("controls") or [], list(control_images))
    if pipe_loader is None:
        from .api import load as pipe_loader
    pipe = pipe_loader(recipe["model"])
    if pipe.model_hash != recipe.get("model_hash") and on_warning is not None:
        on_warning("the model's weights differ from the recipe's model hash")
    outpaint = recipe.get("outpaint")
    result = pipe(recipe["prompt"], seed=recipe["seed"],
                  negative_prompt=recipe.get("negative_prompt", ""), num_steps=recipe["steps"],
                  sampler=recipe["sampler"], guidance_scale=recipe["guidance_scale"],
                  size=tuple(recipe["size"]), init_image=init_image,
                  strength=recipe.get("strength") or 0.6, mask=mask,
                  mask_blur=recipe.get("mask_blur", 0.0),
                  outpaint=tuple(outpaint) if outpaint else None, loras=loras,
                  controls=controls or None,
                  guidance_rescale=recipe.get("guidance_rescale", 0.0),
                  **_clip_guidance_from_recipe(recipe.get("clip_guidance")))
    for key in ("init_image_hash", "mask_hash"):
        if recipe.get(key) and result.recipes[0].get(key) != recipe[key]:
            raise InputImageError(f"the given file does not match the recipe's {key}",
                                  field=key.removesuffix("_hash"))
    for index, (wanted, got) in enumerate(zip(recipe.get("controls") or [],
                                              result.recipes[0].get("controls") or [])):
        if wanted.get("image_hash") != got["image_hash"]:
            raise InputImageError(f"control image {index + 1} does not match the recipe's "
                                  "image_hash", field="control_image",
                                  fix="pass the maps the image was made with, in order")
        if wanted.get("model_hash") != got["model_hash"] and on_warning is not None:
            on_warning(f"ControlNet {index + 1}'s weights differ from the recipe's hash")
    return compare_images(original, result.images[0], result.recipes[0])
