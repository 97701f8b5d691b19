"""Images from disk into scorer embeddings: bounded decode, size grouping, batching."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image

from ..clip.foreign import load_scorer, scorer_image_size
from ..errors import ModelNotFoundError
from ..io.images import open_image
from ..registry import Registry

DEFAULT_MODEL = "emoji-clip"
#: decoded images larger than this multiple of the tower's input side are shrunk first, so a
#: folder of camera photos does not hold gigabytes of float pixels per batch
PRESHRINK_FACTOR = 2


def default_model_spec() -> str:
    """`emoji-clip` when it is bundled or registered, else a clear error asking for --model."""
    names = {entry.name for entry in Registry().entries()}
    if DEFAULT_MODEL in names:
        return DEFAULT_MODEL
    raise ModelNotFoundError(f"no --model given and the default {DEFAULT_MODEL!r} is not "
                             "installed", field="model",
                             fix="pass --model NAME|PATH|hf:FOLDER|openclip:ARCH:WEIGHTS")


def resolve_scorer(spec: str | None, device: str | torch.device = "cpu"):
    """Load the scorer for `spec`, or the default model when `spec` is None."""
    return load_scorer(spec if spec else default_model_spec(), device=device)


def image_to_tensor(image: Image.Image, max_side: int | None = None) -> torch.Tensor:
    """PIL RGB -> float [3, H, W] in [0, 1]; shortest side capped at `max_side` (bicubic)."""
    if max_side is not None and min(image.size) > max_side:
        scale = max_side / min(image.size)
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def load_image_tensor(path: str | Path, scorer=None, field: str = "image") -> torch.Tensor:
    """Decode one image (bounded, allow-listed) as [3, H, W] in [0, 1]."""
    max_side = None if scorer is None else PRESHRINK_FACTOR * scorer_image_size(scorer)
    return image_to_tensor(open_image(path, mode="RGB", field=field), max_side)


@torch.no_grad()
def embed_tensors(scorer, images: list[torch.Tensor]) -> torch.Tensor:
    """Embed images of possibly different sizes: one scorer call per distinct size."""
    if not images:
        return torch.empty(0, 0)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(i)
    rows: list[torch.Tensor | None] = [None] * len(images)
    for indices in groups.values():
        embedded = scorer.embed_image(torch.stack([images[i] for i in indices]))
        for i, row in zip(indices, embedded.float().cpu()):
            rows[i] = row
    return torch.stack(rows)


def embed_image_files(scorer, paths: Iterable[str | Path], batch_size: int = 64,
                      on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Embed image files (any unreadable one raises InputImageError naming it) -> [N, D]."""
    paths = list(paths)
    chunks = []
    for start in range(0, len(paths), batch_size):
        batch = [load_image_tensor(p, scorer, field="images") for p in
                 paths[start:start + batch_size]]
        chunks.append(embed_tensors(scorer, batch))
        if on_batch is not None:
            on_batch(len(batch))
    return torch.cat(chunks) if chunks else torch.empty(0, 0)
