"""The public Python API: `imagesynth.load(name_or_path)(prompt, seed=0).images`."""

from __future__ import annotations

from pathlib import Path

from .pipeline import DiffusionPipeline, GenerationResult, load_pipeline

DEFAULT_MODEL = "emoji"


def load(name_or_path: str | Path = DEFAULT_MODEL, *, device: str | None = None,
         autoencoder=None, dtype: str | None = None) -> DiffusionPipeline:
    """Load a diffusion model by registry/bundled name, folder or SD file, ready to generate
    (`dtype="bfloat16"`/`"float16"`: Stable Diffusion weights in half precision)."""
    return load_pipeline(str(name_or_path), device=device, autoencoder=autoencoder, dtype=dtype)


def edit(image, instruction: str, *, model: str | Path | DiffusionPipeline, seed: int = 0,
         num_images: int = 1, num_steps: int | None = None, sampler: str | None = None,
         guidance_scale: float | None = None, image_guidance_scale: float | None = None,
         device: str | None = None) -> GenerationResult:
    """Edit an image (path, bytes or PIL) by an instruction with an instruction model
    (`imagesynth train instruct`): `edit("in.png", "make the circle blue", model=...).images`."""
    from .editing import edit_image

    pipe = model if isinstance(model, DiffusionPipeline) else load(model, device=device)
    return edit_image(pipe, image, instruction, seed=seed, num_images=num_images,
                      num_steps=num_steps, sampler=sampler, guidance_scale=guidance_scale,
                      image_guidance_scale=image_guidance_scale)


__all__ = ["DEFAULT_MODEL", "DiffusionPipeline", "GenerationResult", "edit", "load"]
