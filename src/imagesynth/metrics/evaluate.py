"""Evaluate generated images against reference images: folders or tensors in, metrics out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .extractors import INCEPTION, FeatureExtractor, create_extractor
from .folder_features import folder_features
from .frechet import fd_from_features
from .inception_score import inception_score
from .kid import kid
from .prdc import density_coverage, precision_recall

METRICS = ("fd", "kid", "pr", "dc", "is")


@dataclass(frozen=True)
class EvaluateConfig:
    """What `imagesynth evaluate` computes; metrics from fd, kid, pr, dc, is."""

    generated_dir: str
    reference_dir: str
    metrics: tuple[str, ...] = ("fd", "kid", "pr", "dc")
    extractor: str = INCEPTION
    inception_path: str | None = None
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    dc_k: int = 5
    is_splits: int = 10
    seed: int = 2020
    batch_size: int = 32
    use_cache: bool = True

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ConfigError(f"unknown metric(s) {unknown or 'none given'}", field="metrics",
                              fix=f"choose from {','.join(METRICS)}")
        if self.batch_size < 1:
            raise ConfigError(f"must be at least 1, got {self.batch_size}", field="batch_size")


def compute_metrics(generated: np.ndarray, reference: np.ndarray, metrics: Sequence[str], *,
                    distance_name: str = "FD", generated_logits: np.ndarray | None = None,
                    kid_subsets: int = 100, kid_subset_size: int = 1000, pr_k: int = 3,
                    dc_k: int = 5, is_splits: int = 10, seed: int = 2020) -> dict[str, float]:
    """The requested metrics on feature arrays; keys are the reported metric names."""
    results: dict[str, float] = {}
    if "fd" in metrics:
        results[distance_name] = fd_from_features(generated, reference)
    if "kid" in metrics:
        k = kid(generated, reference, kid_subsets, kid_subset_size, generator=seed)
        results.update(KID_mean=k.mean, KID_std=k.std, KID_subset_size=k.subset_size)
    if "pr" in metrics:
        pr = precision_recall(reference, generated, k=pr_k)
        results.update(precision=pr.precision, recall=pr.recall)
    if "dc" in metrics:
        dc = density_coverage(reference, generated, k=dc_k)
        results.update(density=dc.density, coverage=dc.coverage)
    if "is" in metrics:
        if generated_logits is None:
            raise ConfigError("the Inception Score needs class logits, which only the "
                              "inception extractor provides", field="metrics",
                              fix="drop 'is' or use --extractor inception")
        score = inception_score(generated_logits, min(is_splits, len(generated_logits)),
                                from_logits=True)
        results.update(IS_mean=score.mean, IS_std=score.std)
    return results


def evaluate_folders(config: EvaluateConfig, *, extractor: FeatureExtractor | None = None,
                     on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Extract (or load cached) features for both folders and compute the metrics."""
    if extractor is None:
        options = {"inception_path": config.inception_path} if config.extractor == INCEPTION \
            else {}
        extractor = create_extractor(config.extractor, **options)
    sets = {}
    for label, folder, field in (("generated", config.generated_dir, "generated_dir"),
                                 ("reference", config.reference_dir, "reference_dir")):
        report = (lambda done, total, label=label: on_progress(label, done, total)) \
            if on_progress else None
        sets[label] = folder_features(folder, extractor, field=field,
                                      batch_size=config.batch_size, use_cache=config.use_cache,
                                      on_progress=report)
    generated, reference = sets["generated"], sets["reference"]
    metrics = compute_metrics(generated.features, reference.features, config.metrics,
                              distance_name=extractor.distance_name,
                              generated_logits=generated.logits, kid_subsets=config.kid_subsets,
                              kid_subset_size=config.kid_subset_size, pr_k=config.pr_k,
                              dc_k=config.dc_k, is_splits=config.is_splits, seed=config.seed)
    return {"extractor": extractor.name, "extractor_fingerprint": extractor.fingerprint,
            "num_generated": len(generated.files), "num_reference": len(reference.files),
            "feature_dim": int(generated.features.shape[1]), "metrics": metrics}


def images_to_arrays(images: Any, field: str) -> list[np.ndarray]:
    """(N, 3, H, W) uint8 [0, 255] or float [0, 1] tensor/array → list of (H, W, 3) in [0, 255]."""
    array = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    if array.ndim != 4 or array.shape[1] != 3:
        raise ConfigError(f"expected (N, 3, H, W) images, got shape {array.shape}", field=field)
    if array.dtype != np.uint8:
        array = array.astype(np.float32)
        if array.min(initial=0) < 0 or array.max(initial=0) > 1:
            raise ConfigError("float images must lie in [0, 1]", field=field,
                              fix="pass uint8 [0, 255] or float [0, 1] images")
        array = array * 255.0
    return list(array.transpose(0, 2, 3, 1))


def extract_features(images: Any, extractor: FeatureExtractor, *, field: str = "images",
                     batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (and logits) of an image tensor, in batches."""
    arrays = images_to_arrays(images, field)
    features, logits = [], []
    for start in range(0, len(arrays), batch_size):
        f, lg = extractor.extract(arrays[start:start + batch_size])
        features.append(f)
        if lg is not None:
            logits.append(lg)
    return np.concatenate(features), (np.concatenate(logits) if logits else None)


def fid(images_a: Any, images_b: Any, *, extractor: FeatureExtractor | None = None,
        inception_path: str | None = None, batch_size: int = 32) -> float:
    """Fréchet distance between two image tensors (FID with the default Inception extractor)."""
    extractor = extractor or create_extractor(INCEPTION, inception_path=inception_path)
    fa, _ = extract_features(images_a, extractor, field="images_a", batch_size=batch_size)
    fb, _ = extract_features(images_b, extractor, field="images_b", batch_size=batch_size)
    return fd_from_features(fa, fb)
