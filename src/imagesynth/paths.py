"""Where imagesynth keeps its state: caches, the model registry and bundled models."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def home() -> Path:
    """State folder: $IMAGESYNTH_HOME, else ~/.imagesynth (created on demand)."""
    path = Path(os.environ.get("IMAGESYNTH_HOME", Path.home() / ".imagesynth")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(*parts: str) -> Path:
    """A sub-folder of the cache (npm tarballs, embedding and feature caches)."""
    path = home().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def bundled_models_dir() -> Path:
    """The repository's `models/` folder (bundled weights); $IMAGESYNTH_MODELS overrides it."""
    if "IMAGESYNTH_MODELS" in os.environ:
        return Path(os.environ["IMAGESYNTH_MODELS"]).expanduser()
    return PACKAGE_DIR.parent.parent / "models"
