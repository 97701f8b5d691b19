"""CLIP score from image and text embeddings, in its two published conventions.

- Hessel et al. 2021 (CLIPScore): w · max(cos(E_I, E_C), 0) per pair with w = 2.5, then averaged.
- torchmetrics `CLIPScore`: 100 · cos per pair, averaged, then max(mean, 0).
The two differ in scale and in where the clamp sits, so they have distinct names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._arrays import as_features, check_same_dims


@dataclass(frozen=True)
class ClipScoreResult:
    """The averaged score and the per-pair values it came from."""

    score: float
    per_pair: np.ndarray


def _cosines(image_embeddings: Any, text_embeddings: Any) -> np.ndarray:
    image = as_features(image_embeddings, "image_embeddings", min_samples=1)
    text = as_features(text_embeddings, "text_embeddings", min_samples=1)
    check_same_dims(image, text, "image_embeddings", "text_embeddings")
    if image.shape[0] != text.shape[0]:
        raise ConfigError(f"has {text.shape[0]} rows but image_embeddings has "
                          f"{image.shape[0]}; scores are per image–caption pair",
                          field="text_embeddings", fix="pass one caption embedding per image")
    norms = np.linalg.norm(image, axis=1) * np.linalg.norm(text, axis=1)
    if (norms == 0).any():
        raise ConfigError("an embedding has zero norm", field="image_embeddings")
    return (image * text).sum(axis=1) / norms


def clip_score_hessel(image_embeddings: Any, text_embeddings: Any, *,
                      weight: float = 2.5) -> ClipScoreResult:
    """CLIPScore (Hessel et al. 2021): mean of w · max(cos, 0) over pairs."""
    per_pair = weight * np.clip(_cosines(image_embeddings, text_embeddings), 0.0, None)
    return ClipScoreResult(float(per_pair.mean()), per_pair)


def clip_score_torchmetrics(image_embeddings: Any, text_embeddings: Any) -> ClipScoreResult:
    """torchmetrics' convention: max(mean of 100 · cos over pairs, 0)."""
    per_pair = 100.0 * _cosines(image_embeddings, text_embeddings)
    return ClipScoreResult(max(float(per_pair.mean()), 0.0), per_pair)
