"""The public Python API: `imagesynth.load(name_or_path)(prompt, seed=0).images`."""

from __future__ import annotations

from pathlib import Path

from .pipeline import DiffusionPipeline, GenerationResult, load_pipeline

DEFAULT_MODEL = "emoji"


def load(name_or_path: str | Path = DEFAULT_MODEL, *, device: str | None = None,
         autoencoder=None) -> DiffusionPipeline:
    """Load a diffusion model by registry/bundled name or folder path, ready to generate."""
    return load_pipeline(str(name_or_path), device=device, autoencoder=autoencoder)


__all__ = ["DEFAULT_MODEL", "DiffusionPipeline", "GenerationResult", "load"]
