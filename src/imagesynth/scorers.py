"""The scorer interface: text–image relatedness that guidance, apps and metrics all speak."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Scorer(Protocol):
    """A CLIP-like model: texts and images in one space; `embed_image` is differentiable."""

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Embeddings [N, D] for N texts."""
        ...

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, D] for RGB images [B, 3, H, W] in [0, 1]."""
        ...
