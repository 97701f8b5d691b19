"""CLIP score of image files against one prompt, in both published conventions."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..metrics.clip_score import clip_score_hessel, clip_score_torchmetrics
from .embedding import embed_image_files


@torch.no_grad()
def score_images(scorer, images: list[str | Path], prompt: str, batch_size: int = 64) -> dict:
    """CLIPScore (Hessel, w = 2.5) and torchmetrics' 100·cos, overall and per image."""
    if not prompt or not prompt.strip():
        raise ConfigError("empty prompt", field="prompt", fix='pass --prompt "..."')
    if not images:
        raise ConfigError("no images given", field="images", fix="pass image files")
    image_embeddings = embed_image_files(scorer, images, batch_size=batch_size).numpy()
    text_embedding = scorer.embed_text([prompt]).float().cpu().numpy()
    text_embeddings = text_embedding.repeat(len(image_embeddings), axis=0)
    hessel = clip_score_hessel(image_embeddings, text_embeddings)
    torchmetrics = clip_score_torchmetrics(image_embeddings, text_embeddings)
    return {
        "model": scorer.name, "prompt": prompt, "num_images": len(images),
        "clip_score_hessel": hessel.score, "clip_score_torchmetrics": torchmetrics.score,
        "images": [{"image": str(path), "clip_score_hessel": float(h),
                    "clip_score_torchmetrics": float(t)}
                   for path, h, t in zip(images, hessel.per_pair, torchmetrics.per_pair)],
    }
