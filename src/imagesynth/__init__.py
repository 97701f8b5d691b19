"""imagesynth: an offline-first image-synthesis toolkit."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ImageSynthError  # noqa: E402

__all__ = ["ImageSynthError", "__version__"]
