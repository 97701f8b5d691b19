"""Stream folders of images through an extractor, with a feature cache.

The cache entry for a folder is keyed by the SHA-256 of every image file (in sorted path order)
and by the extractor's fingerprint (weights hash + preprocessing), so renaming a folder reuses
it, and changing one pixel or the weights recomputes. Entries live under
`imagesynth.paths.cache_dir("features")`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
from ..io.files import atomic_path, sha256_file
from ..io.images import open_image
from ..paths import cache_dir
from .extractors import FeatureExtractor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class FolderFeatures:
    """Features (N, d), logits (N, C) or None, the image files, and whether the cache hit."""

    features: np.ndarray
    logits: np.ndarray | None
    files: tuple[Path, ...]
    from_cache: bool


def list_images(folder: str | os.PathLike, field: str) -> list[Path]:
    """Image files under `folder` (recursive, sorted); raise DataError if there are none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder", field=field, fix="pass a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower()
                   in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} images", field=field,
                        fix="point it at the folder your images are in")
    return files


def folder_features(folder: str | os.PathLike, extractor: FeatureExtractor, *,
                    field: str = "folder", batch_size: int = 32, use_cache: bool = True,
                    on_progress: Callable[[int, int], None] | None = None) -> FolderFeatures:
    """Features of every image in `folder`, read via the bounded decoder, cached."""
    files = list_images(folder, field)
    key = hashlib.sha256(extractor.fingerprint.encode())
    for path in files:
        key.update(sha256_file(path).encode())
    cache_file = cache_dir("features") / f"{key.hexdigest()}.npz"
    if use_cache and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as cached:
            logits = cached["logits"] if "logits" in cached.files else None
            if on_progress:
                on_progress(len(files), len(files))
            return FolderFeatures(cached["features"], logits, tuple(files), True)
    feature_batches, logit_batches = [], []
    for start in range(0, len(files), batch_size):
        batch = files[start:start + batch_size]
        images = [np.asarray(open_image(path, mode="RGB", field=field)) for path in batch]
        features, logits = extractor.extract(images)
        feature_batches.append(features)
        if logits is not None:
            logit_batches.append(logits)
        if on_progress:
            on_progress(start + len(batch), len(files))
    features = np.concatenate(feature_batches)
    logits = np.concatenate(logit_batches) if logit_batches else None
    if use_cache:
        arrays = {"features": features} if logits is None else \
            {"features": features, "logits": logits}
        with atomic_path(cache_file) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return FolderFeatures(features, logits, tuple(files), False)
