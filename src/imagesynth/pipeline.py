"""Text-to-image pipeline over a trained diffusion model folder.

prompt(s) + negative -> text states -> CFG-wrapped EDM denoiser -> sampler over Karras sigmas with
one seeded generator per image -> (autoencoder decode) -> PIL images, each with its full recipe.
Image i depends only on seed i, so a batch gives the same pixels as generating each image alone.
"""

from __future__ import annotations

import datetime
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from PIL import Image

from .diffusion.denoisers import EDMDenoiser
from .errors import ConfigError, InputImageError, ModelNotFoundError, NumericError
from .io.files import sha256_bytes, sha256_file
from .io.images import open_image
from .registry import SD_FAMILY, Registry

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
SCHEDULE = {"schedule": "karras", "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "rho": RHO}
ImageInput = str | Path | bytes | Image.Image
#: an image size: a side (square) or (width, height)
Size = int | tuple[int, int]


def size_pair(size: Size) -> tuple[int, int]:
    """(width, height) of a side or a (width, height) pair."""
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ConfigError(f"{size!r} is not (width, height)", field="size")
        return int(size[0]), int(size[1])
    return int(size), int(size)


@dataclass
class GenerationResult:
    """Generated images (PIL) and, for each, the recipe that regenerates it."""

    images: list[Image.Image]
    recipes: list[dict[str, Any]] = field(default_factory=list)
    #: the sampler's result in the denoiser's space (pixels or scaled latents), before decoding
    samples: torch.Tensor | None = None


def _read_input_image(source: ImageInput, mode: str, field_name: str) -> tuple[Image.Image, str]:
    """Decode an init image or mask through the bounded decoder; return it and its content hash."""
    if isinstance(source, Image.Image):
        image = source.convert(mode)
    else:
        image = open_image(source if isinstance(source, bytes) else Path(source), mode=mode,
                           field=field_name)
    return image, sha256_bytes(image.tobytes())


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> float tensor [1,C,H,W] in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def _to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images [B,3,H,W] in [-1,1] -> 8-bit PIL images."""
    array = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return [Image.fromarray(a) for a in array.cpu().numpy()]


def _versions() -> dict[str, str]:
    import diffusers

    from . import __version__

    return {"imagesynth": __version__, "torch": torch.__version__,
            "diffusers": diffusers.__version__}


class DiffusionPipeline:
    """A loaded diffusion model: call it with a prompt to get images and recipes."""

    def __init__(self, denoiser, text_encoder, config: dict[str, Any], model_name: str,
                 model_hash: str, autoencoder=None, device: torch.device | str = "cpu",
                 captions: list[str] | None = None):
        self.denoiser = denoiser.to(device).eval()
        #: the distinct training captions (the model folder's captions.txt), for `expand`
        self.captions = captions
        self._expander = None
        self.text_encoder = text_encoder
        self.config = config
        self.model_name, self.model_hash = model_name, model_hash
        self.autoencoder = autoencoder.to(device).eval() if autoencoder is not None else None
        self.device = torch.device(device)
        settings = config.get("diffusion", {})
        self.image_size = int(config["image_size"])
        self.default_steps = int(settings.get("default_steps", 20))
        self.default_sampler = settings.get("default_sampler", "dpmpp_2m")
        self.default_guidance = float(settings.get("default_guidance", 3.0))

    def expand_prompt(self, prompt: str):
        """Rewrite a typed prompt into this model's caption vocabulary (`text.expand`)."""
        from .text.expand import PromptExpander

        if self._expander is None:
            self._expander = PromptExpander(self.text_encoder, self.captions or [])
        return self._expander(prompt)

    @property
    def allowed_sizes(self) -> list[int]:
        """Image sides this model generates: its training size only."""
        return [self.image_size]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape [C, s, s] of one sample in the space the denoiser works in (pixels or latents)."""
        side = int(self.config["sample_size"])
        return int(self.config["channels"]), side, side

    def check_size(self, width: int, height: int | None = None) -> None:
        """Refuse any size but the training size (a ConfigError naming `size`)."""
        height = width if height is None else height
        if (width, height) != (self.image_size, self.image_size):
            label = str(width) if width == height else f"{width}x{height}"
            raise ConfigError(f"{label} is not a size this model generates", field="size",
                              fix=f"model {self.model_name!r} makes {self.image_size}x"
                                  f"{self.image_size} images only (its training size)")

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The sampling schedule: `num_steps + 1` Karras sigmas, on the model's device."""
        from .diffusion import karras_sigmas

        return karras_sigmas(num_steps, SIGMA_MIN, SIGMA_MAX, RHO).to(self.device)

    def img2img_sigmas(self, num_steps: int, strength: float) -> torch.Tensor:
        """The img2img schedule: `num_steps` steps from the ramp position `1 - strength`."""
        from .diffusion import img2img_sigmas

        return img2img_sigmas(num_steps, strength, SIGMA_MIN, SIGMA_MAX, RHO).to(self.device)

    def noise_scale(self, sigmas: torch.Tensor) -> torch.Tensor | float:
        """Standard deviation of the starting noise of text-to-image sampling over `sigmas`."""
        return sigmas[0]

    def latent_shape(self, size: Size) -> tuple[int, int, int]:
        """Shape [C, h, w] the denoiser samples for an image of `size`."""
        return self.sample_shape

    def schedule_recipe(self) -> dict[str, Any]:
        """How `sigmas` is built, for the recipe."""
        return dict(SCHEDULE)

    def inpaint(self, sample, guided, x0: torch.Tensor, mask: torch.Tensor,
                template: torch.Tensor, generators, num_steps: int, mask_blur: float,
                callback=None) -> torch.Tensor:
        """Repaint where `mask` [1,1,S,S] is 1, keep `x0` elsewhere (`diffusion.InpaintDenoiser`).

        `guided()` builds the guided denoiser; `template` is shaped like the samples.
        """
        from .diffusion import InpaintDenoiser

        z0 = self._encode_image(x0, generators)
        if template.shape[-2:] != mask.shape[-2:]:  # latent model: the mask covers latent cells
            mask = torch.nn.functional.interpolate(mask, size=template.shape[-2:], mode="area")
        inpaint = InpaintDenoiser(guided(), z0, mask, generators, mask_blur)
        sigmas = self.sigmas(num_steps)
        return sample(inpaint, inpaint.start(sigmas[0], generators), sigmas,
                      generator=generators, callback=callback)

    def guided_denoiser(self, prompts: list[str], negative_prompt: str, guidance_scale: float,
                        base_denoiser=None, size: int | None = None,
                        guidance_rescale: float = 0.0):
        """The denoiser under CFG: one prompt per sample, the negative prompt as the uncond branch.

        `base_denoiser` replaces the model's own (e.g. the LoRA-adapted copy from `with_loras`);
        `size` is the image side (models conditioned on it read it); `guidance_rescale` is
        Lin et al.'s CFG rescale (0 = off).

        Each sample gets its own CFG pair, evaluated alone (`PerSampleDenoiser`), with its prompt
        padded only as far as itself and the negative prompt need: exactly what generating that
        image on its own computes, so batches never change an image's bytes.
        """
        from .diffusion import ClassifierFreeGuidance, PerSampleDenoiser

        guided = {}
        for prompt in dict.fromkeys(prompts):
            states, token_mask = self.encode_prompts([prompt])
            negative_states, negative_mask = self.encode_prompts([negative_prompt])
            length = max(states.shape[1], negative_states.shape[1])
            pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1]))  # noqa: E731
            pad_mask = lambda m: torch.nn.functional.pad(m, (0, length - m.shape[1]))  # noqa: E731
            cond = {"encoder_hidden_states": pad(states),
                    "encoder_attention_mask": pad_mask(token_mask)}
            uncond = {"encoder_hidden_states": pad(negative_states),
                      "encoder_attention_mask": pad_mask(negative_mask)}
            guided[prompt] = ClassifierFreeGuidance(base_denoiser or self.denoiser, cond, uncond,
                                                    guidance_scale, guidance_rescale)
        if len(prompts) == 1:
            return guided[prompts[0]]
        return PerSampleDenoiser([guided[prompt] for prompt in prompts])

    def _clip_scorer(self, clip_model, scale: float, cutouts: int):
        """The CLIP scorer for CLIP guidance and its recipe entry (spec, scale, cutouts)."""
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
            raise ConfigError(f"must be a number >= 0, got {scale!r}", field="clip_guidance")
        if not isinstance(cutouts, int) or not 1 <= cutouts <= 64:
            raise ConfigError(f"must be an integer in [1, 64], got {cutouts!r}",
                              field="clip_cutouts")
        if clip_model is None:
            raise ConfigError("CLIP guidance needs a CLIP", field="clip_model",
                              fix="pass --clip-model NAME (e.g. shapes-clip, hf:FOLDER, "
                                  "openclip:ARCH:WEIGHTS)")
        if isinstance(clip_model, str):
            from .clip.foreign import load_scorer

            spec = clip_model
            if getattr(self, "_scorer", (None,))[0] != spec:
                self._scorer = (spec, load_scorer(spec, device=self.device))
            scorer = self._scorer[1]
        else:
            spec, scorer = getattr(clip_model, "name", type(clip_model).__name__), clip_model
        return scorer, {"model": spec, "scale": float(scale), "cutouts": cutouts}

    def _clip_guided(self, denoiser, scorer, prompts: list[str], scale: float, cutouts: int,
                     seeds: list[int]):
        """`denoiser` under CLIP guidance; image i's cutouts come from its own seeded generator."""
        from .diffusion import CLIPGuidance
        from .guided.loop import scorer_input_size

        cutout_generators = [torch.Generator().manual_seed(seed ^ 0x5EED) for seed in seeds]
        return CLIPGuidance(denoiser, scorer, prompts, scale, cutout_generators,
                            cut_size=scorer_input_size(scorer), num_cutouts=cutouts,
                            to_image=lambda z: (self.decode(z) + 1) / 2)

    def with_loras(self, loras) -> tuple[nn.Module, list[dict[str, Any]]]:
        """The denoiser with LoRAs [(FILE or LoraFile, weight), ...] stacked, and their recipe entries.

        A new denoiser wraps the model's (`diffusion.lora.apply_loras`); the last one is kept,
        so repeated calls with the same files and weights reuse it.
        """
        from .diffusion.lora import LoraFile, apply_loras, lora_recipe, read_lora

        if not loras:
            return self.denoiser, []
        loaded = [(lora if isinstance(lora, LoraFile) else read_lora(lora), float(weight))
                  for lora, weight in loras]
        entries = lora_recipe(loaded)
        key = tuple((e["sha256"], e["weight"]) for e in entries)
        if getattr(self, "_lora_cache", (None,))[0] != key:
            self._lora_cache = (key, apply_loras(self.denoiser, loaded, self.model_hash))
        return self._lora_cache[1], entries

    def with_controls(self, denoiser, controls, schedule: torch.Tensor, size: int | None = None):
        """`denoiser` wrapped with ControlNets (`families.controlnet.controlled_denoiser`) and
        their recipe entries; loaded ControlNets are kept for the next call. `size` is the
        image side (models of one size ignore it)."""
        from .families.controlnet import controlled_denoiser

        if not hasattr(self, "_controlnets"):
            self._controlnets = {}
        return controlled_denoiser(denoiser, controls, schedule.to(self.device),
                                   model_hash=self.model_hash, image_size=self.image_size,
                                   device=self.device, cache=self._controlnets)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Denoiser-space samples -> images [B,3,H,W] near [-1, 1]; unclamped and differentiable."""
        if self.autoencoder is None:
            return x
        # Clamping would zero the gradient of every saturated pixel: ask for raw output if we can.
        if "clamp" in inspect.signature(self.autoencoder.decode).parameters:
            return self.autoencoder.decode(x, clamp=False)
        return self.autoencoder.decode(x)

    def encode_prompts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states [B,T,D] and float mask [B,T], padded to the longest prompt.

        Each distinct prompt is encoded on its own: batched attention over padding changes the
        last bits, and an image must not depend on which other prompts share its batch.
        """
        encodings = {text: self.text_encoder([text]) for text in dict.fromkeys(texts)}
        length = max(int(e.mask.sum()) for e in encodings.values())
        dim = next(iter(encodings.values())).states.shape[-1]
        states, mask = torch.zeros(len(texts), length, dim), torch.zeros(len(texts), length)
        for i, text in enumerate(texts):
            n = int(encodings[text].mask.sum())
            states[i, :n] = encodings[text].states[0, :n]
            mask[i, :n] = 1
        return states.to(self.device), mask.to(self.device)

    def _validate(self, prompts: list[str], num_steps: int, guidance_scale: float, size: Size,
                  strength: float, seeds: list[int]) -> None:
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ConfigError("the prompt is empty", field="prompt",
                              fix='describe the image, e.g. "a red circle"')
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ConfigError(f"must be an integer >= 1, got {num_steps!r}", field="steps")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) \
                or guidance_scale < 0:
            raise ConfigError(f"must be a number >= 0, got {guidance_scale!r}", field="guidance",
                              fix="0 ignores the prompt, 1 is plain conditioning, 2-5 is typical")
        self.check_size(*size_pair(size))
        if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ConfigError(f"must be in (0, 1], got {strength!r}", field="strength")
        if any(not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2 ** 63
               for s in seeds):
            raise ConfigError("seeds must be integers in [0, 2^63)", field="seed")

    def _encode_image(self, images: torch.Tensor, generators=None) -> torch.Tensor:
        """Images [1,3,H,W] in [-1,1] -> the denoiser's space, one row per generator if given."""
        if self.autoencoder is None:
            encoded = images
        else:
            with torch.no_grad():
                encoded = self.autoencoder.encode(images)
        return encoded if generators is None else encoded.expand(len(generators), -1, -1, -1)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(x).all():
            raise NumericError("the sampler produced NaN or Inf", field="sampling",
                               fix="lower the guidance scale, or use more steps")
        if self.autoencoder is None:
            return x
        with torch.no_grad():  # one image per call: a batched conv would change the last bits
            images = torch.cat([self.autoencoder.decode(x[i:i + 1]) for i in range(len(x))])
        if not torch.isfinite(images).all():
            raise NumericError("decoding produced NaN or Inf", field="sampling",
                               fix="lower the guidance scale")
        return images

    def _init_and_mask(self, init_image: ImageInput | None, mask: ImageInput | None, size: Size,
                       outpaint: tuple[int, int, int, int] | None = None
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
        """Init image [1,3,S,S] in [-1,1] and mask [1,1,s,s] in the denoiser's resolution."""
        recipe: dict[str, Any] = {}
        if mask is not None and init_image is None:
            raise ConfigError("a mask needs an init image to repaint", field="mask",
                              fix="pass --init-image with --mask")
        if outpaint is not None and (init_image is None or mask is not None):
            raise ConfigError("outpainting extends an init image and paints its own mask",
                              field="outpaint", fix="pass --init-image and no --mask")
        if init_image is None:
            return None, None, recipe
        image, recipe["init_image_hash"] = _read_input_image(init_image, "RGB", "init_image")
        width, height = size_pair(size)
        if outpaint is not None:
            if width != height:
                raise ConfigError("outpainting makes square images", field="outpaint",
                                  fix="use one --size for outpainting")
            return self._outpaint_canvas(image, width, outpaint) + (recipe,)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        x0 = _to_tensor(image).to(self.device) * 2 - 1
        mask_tensor = None
        if mask is not None:
            mask_image, recipe["mask_hash"] = _read_input_image(mask, "L", "mask")
            if mask_image.size != (width, height):
                raise InputImageError(f"the mask is {mask_image.size[0]}x{mask_image.size[1]}, "
                                      f"the image {width}x{height}", field="mask",
                                      fix=f"make the mask {width}x{height} (white = repaint)")
            mask_tensor = _to_tensor(mask_image).to(self.device)
        return x0, mask_tensor, recipe

    def _outpaint_canvas(self, image: Image.Image, size: int, pads: tuple[int, int, int, int]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outpainting at a fixed model size: shrink the image into the canvas, pad, mask the border."""
        from .diffusion import pad_for_outpaint

        left, top, right, bottom = pads
        inner_w, inner_h = size - left - right, size - top - bottom
        if min(pads) < 0 or inner_w < 1 or inner_h < 1 or left + top + right + bottom == 0:
            raise ConfigError(f"borders {left},{top},{right},{bottom} do not fit a {size}px image",
                              field="outpaint",
                              fix=f"give LEFT,TOP,RIGHT,BOTTOM >= 0, not all 0, each side < {size}")
        inner = image.resize((inner_w, inner_h), Image.Resampling.LANCZOS)
        x0, mask = pad_for_outpaint(_to_tensor(inner) * 2 - 1, left, top, right, bottom)
        return x0.to(self.device), mask.to(self.device)

    def preview(self, denoised: torch.Tensor) -> list[Image.Image]:
        """A sampler step's `denoised` estimate (denoiser space) as 8-bit images, for live previews."""
        with torch.no_grad():
            images = self.decode(denoised) if self.autoencoder is not None else denoised
        return _to_pil(torch.nan_to_num(images.float()))

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], *, seed: int | list[int] = 0,
                 negative_prompt: str = "", num_images: int = 1, num_steps: int | None = None,
                 sampler: str | None = None, guidance_scale: float | None = None,
                 size: Size | None = None, init_image: ImageInput | None = None,
                 strength: float = 0.6, mask: ImageInput | None = None,
                 mask_blur: float = 0.0, outpaint: tuple[int, int, int, int] | None = None,
                 callback=None, expand: bool = False, loras=None,
                 controls=None, guidance_rescale: float = 0.0, clip_guidance: float = 0.0,
                 clip_model=None, clip_cutouts: int = 8) -> GenerationResult:
        """Generate images: one per prompt, or `num_images` of one prompt with seeds seed, seed+1, ...

        `callback(i, sigma, x, denoised)` runs every sampler step (previews, progress, cancel);
        `outpaint=(left, top, right, bottom)` extends the init image by repainting those borders;
        `expand=True` first rewrites each prompt into the model's caption vocabulary and records
        the typed and the expanded prompt in the recipe; `loras=[(FILE, weight), ...]` stacks
        LoRA files on the denoiser (each file's SHA-256 and weight go into the recipe);
        `controls=[ControlInput(image, model, scale, start, end), ...]` adds ControlNets
        (`diffusion.control`; image and ControlNet hashes, scale and window go into the recipe);
        `guidance_rescale` rescales CFG (Lin et al. 2023); `clip_guidance=S` with `clip_model`
        (a CLIP spec or Scorer) steers every step toward the prompt with a CLIP's gradient
        (`diffusion.CLIPGuidance`, `clip_cutouts` cutouts per evaluation, seeded per image).
        """
        from .diffusion import get_sampler, randn_like_per_sample
        from .diffusion.noise import generators_from_seeds

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if isinstance(seed, list):
            seeds = list(seed)
        elif len(prompts) == 1:
            if not isinstance(num_images, int) or num_images < 1:
                raise ConfigError(f"must be >= 1, got {num_images!r}", field="n")
            seeds = [seed + i for i in range(num_images)] if isinstance(seed, int) else [seed]
        else:
            seeds = [seed] * len(prompts)
        if len(prompts) == 1:
            prompts = prompts * len(seeds)
        if len(seeds) != len(prompts):
            raise ConfigError(f"{len(seeds)} seeds for {len(prompts)} prompts", field="seed")
        expansions = None
        if expand:
            from .text import validate_texts

            distinct = dict.fromkeys(validate_texts(prompts))
            expansions = {p: self.expand_prompt(p) for p in distinct}
            typed, prompts = prompts, [expansions[p].expanded for p in prompts]
        num_steps = self.default_steps if num_steps is None else num_steps
        sampler_name = sampler or self.default_sampler
        guidance_scale = self.default_guidance if guidance_scale is None else guidance_scale
        size = self.image_size if size is None else size
        self._validate(prompts, num_steps, guidance_scale, size, strength, seeds)
        sample = get_sampler(sampler_name)
        outpaint = tuple(outpaint) if outpaint is not None else None
        x0, mask_tensor, edit_recipe = self._init_and_mask(init_image, mask, size, outpaint)

        base_denoiser, lora_entries = self.with_loras(loras)
        if controls:  # the window is read off the schedule the sampler below runs
            schedule = (self.img2img_sigmas(num_steps, strength)
                        if x0 is not None and mask_tensor is None else self.sigmas(num_steps))
            base_denoiser, control_entries = self.with_controls(base_denoiser, controls, schedule,
                                                                size=size)
        generators = generators_from_seeds(seeds)
        clip_entry = None
        if clip_guidance:
            scorer, clip_entry = self._clip_scorer(clip_model, clip_guidance, clip_cutouts)

        def guided(**extra):
            denoiser = self.guided_denoiser(prompts, negative_prompt, guidance_scale,
                                            base_denoiser, size=size,
                                            guidance_rescale=guidance_rescale, **extra)
            if not clip_guidance:
                return denoiser
            return self._clip_guided(denoiser, scorer, prompts, clip_guidance, clip_cutouts, seeds)

        channels, latent_height, latent_width = self.latent_shape(size)
        template = torch.empty(len(seeds), channels, latent_height, latent_width,
                               device=self.device)

        if x0 is None:
            sigmas = self.sigmas(num_steps)
            x = randn_like_per_sample(template, generators) * self.noise_scale(sigmas)
            result = sample(guided(), x, sigmas, generator=generators, callback=callback)
        elif mask_tensor is None:
            from .diffusion import img2img

            z0 = self._encode_image(x0, generators)
            sigmas = self.img2img_sigmas(num_steps, strength)
            result = img2img(sample, guided(), z0, sigmas, generators, callback=callback)
        else:
            result = self.inpaint(sample, guided, x0, mask_tensor, template, generators,
                                  num_steps, mask_blur, callback)
        images = _to_pil(self._decode(result))

        common = {"negative_prompt": negative_prompt, "steps": num_steps, "sampler": sampler_name,
                  "sampler_options": self.schedule_recipe(),
                  "guidance_scale": guidance_scale, "size": list(size_pair(size)),
                  "model": self.model_name, "model_hash": self.model_hash,
                  "versions": _versions(), "device": str(self.device), "dtype": "float32",
                  "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec="seconds")}
        if lora_entries:
            common["loras"] = lora_entries
        if guidance_rescale:
            common["guidance_rescale"] = guidance_rescale
        if clip_entry:
            common["clip_guidance"] = clip_entry
        if controls:
            common["controls"] = control_entries
        if x0 is not None:
            common.update(edit_recipe, strength=strength if mask_tensor is None else None)
            if mask_tensor is not None:
                common["mask_blur"] = mask_blur
            if outpaint is not None:
                common["outpaint"] = list(outpaint)
        recipes = [{"prompt": p, "seed": s, **common} for p, s in zip(prompts, seeds)]
        if expansions is not None:  # the model saw the expanded prompt; the typed one is kept
            for recipe, original in zip(recipes, typed):
                recipe.update(typed_prompt=original, expansion=expansions[original].to_dict())
        return GenerationResult(images, recipes, result)


def load_pipeline(name_or_path: str = "emoji", *, autoencoder=None, text_encoder=None,
                  device: torch.device | str | None = None,
                  dtype: str | torch.dtype | None = None) -> DiffusionPipeline:
    """Load a diffusion model (registry name, bundled name or folder) as a pipeline.

    `dtype` ("float16", "bfloat16") stores a Stable Diffusion model's weights in half precision.

    `autoencoder` / `text_encoder` reuse already loaded modules instead of loading the config's.
    """
    from .text import load_text_encoder

    registry = Registry()
    entry = registry.get(str(name_or_path))
    if entry.family == SD_FAMILY:
        return _load_sd(registry, entry, device, dtype)
    if dtype not in (None, "float32", torch.float32):
        raise ConfigError("only Stable Diffusion models load in half precision here",
                          field="dtype", fix="leave dtype out (use `models half` for a copy)")
    config = entry.config()
    if config.get("family") != "diffusion":
        raise ModelNotFoundError(f"{entry.name!r} is a {config.get('family', 'unknown')!r} model, "
                                 "not a diffusion model", field="model",
                                 fix="pick a diffusion model from `imagesynth models list`")
    state = registry.load_state_dict(entry)
    model_hash = entry.weights_sha256 or ""
    latent = config.get("autoencoder")
    if latent and autoencoder is None:
        if not latent.get("spec"):
            raise ModelNotFoundError("this latent model names no autoencoder", field="autoencoder",
                                     fix="pass the autoencoder it was trained with")
        autoencoder, digest = load_autoencoder_spec(latent["spec"])
        if digest != latent["sha256"]:
            raise ModelNotFoundError(f"autoencoder {latent['spec']!r} is not the one this model "
                                     "was trained with (SHA-256 differs)", field="autoencoder",
                                     fix="restore the original autoencoder weights")
    # A name resolves through the registry; a path is stored resolved so `reproduce` finds it.
    model_name = entry.name if entry.source != "path" else str(entry.root)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if text_encoder is None:
        text_encoder = load_text_encoder(config["text_encoder"])
    elif text_encoder.state_dim != config["unet"]["cross_attention_dim"]:
        # A wrong encoder would otherwise fail deep inside cross-attention on the first prompt.
        raise ConfigError(f"the given text encoder gives {text_encoder.state_dim}-wide states; "
                          f"this model was trained on {config['text_encoder']!r} "
                          f"({config['unet']['cross_attention_dim']} wide)", field="text_encoder",
                          fix=f"pass load_text_encoder({config['text_encoder']!r}) or none")
    from .text.expand import read_captions

    captions = read_captions(entry.root) if entry.root.is_dir() else None
    return DiffusionPipeline(load_denoiser(state, config), text_encoder,
                             config, model_name, model_hash, autoencoder, device, captions)


def _load_sd(registry: Registry, entry, device, dtype=None) -> DiffusionPipeline:
    """A Stable Diffusion model (diffusers folder or single file), hashes verified first."""
    from .sd.loading import load_sd_pipeline

    if entry.source != "path":  # a path was hashed just now; a registered model may have changed
        problems = registry.verify(entry)
        if problems:
            from .errors import IntegrityError

            raise IntegrityError(f"model {entry.name!r}: {problems[0]}", field="model",
                                 fix="restore the original files or re-add the model")
    details = entry.details
    override = details.get("prediction") if details.get("prediction_override") else None
    name = entry.name if entry.source != "path" else str(entry.root)
    return load_sd_pipeline(entry.root, name=name, model_hash=entry.weights_sha256,
                            prediction_type=override, trust_pickle=entry.trusted_pickle,
                            config=details.get("config"), device=device,
                            dtype=_torch_dtype(dtype))


def _torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """"bfloat16" / torch.bfloat16 / None -> a floating torch dtype (float32 by default)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise ConfigError(f"unknown dtype {dtype!r}", field="dtype",
                          fix=f"use one of: {', '.join(names)}")
    return names[dtype]


def load_denoiser(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> EDMDenoiser:
    """Rebuild the EDM denoiser of a diffusion model folder from its config and weights."""
    from .nets.unet import build_unet

    network = build_unet(config["unet"])
    network.load_state_dict(state_dict)
    return EDMDenoiser(network, sigma_data=float(config["sigma_data"])).eval()


def load_autoencoder_spec(spec: str) -> tuple[nn.Module, str]:
    """Load an autoencoder model by registry name or path; return it and its weights' SHA-256."""
    from .nets.autoencoder import load_autoencoder  # built by the autoencoder family

    entry = Registry().get(spec)
    digest = entry.weights_sha256 or sha256_file(entry.root)
    return load_autoencoder(spec), digest


def image_bytes_equal(first: Image.Image, second: Image.Image) -> bool:
    """True when two images have identical mode, size and pixels."""
    return (first.mode == second.mode and first.size == second.size
            and first.tobytes() == second.tobytes())

