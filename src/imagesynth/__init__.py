"""imagesynth: an offline-first image-synthesis toolkit."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ImageSynthError  # noqa: E402

__all__ = ["ImageSynthError", "__version__", "load"]


def __getattr__(name: str):
    # Lazy: `import imagesynth` stays cheap; torch loads only when a model is loaded.
    if name == "load":
        from .api import load

        return load
    raise AttributeError(f"module 'imagesynth' has no attribute {name!r}")
