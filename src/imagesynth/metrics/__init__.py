"""Evaluation metrics: FD/FID, KID, IS, precision/recall, density/coverage, CLIP score, PPL."""

from .clip_score import ClipScoreResult, clip_score_hessel, clip_score_torchmetrics
from .evaluate import (EvaluateConfig, compute_metrics, evaluate_folders, extract_features,
                       fid)
from .extractors import (FeatureExtractor, InceptionExtractor, ModuleExtractor,
                         available_extractors, create_extractor, register_extractor)
from .folder_features import FolderFeatures, folder_features, list_images
from .frechet import GaussianStatistics, fd_from_features, feature_statistics, frechet_distance
from .inception import FIDInceptionV3, load_fid_inception, resize_for_inception, weights_dir
from .inception_score import InceptionScoreResult, inception_score
from .kid import KIDResult, kid
from .ppl import PathLengthResult, perceptual_path_length, squared_l2_distance
from .prdc import (DensityCoverageResult, PrecisionRecallResult, density_coverage,
                   precision_recall)

__all__ = [
    "ClipScoreResult", "DensityCoverageResult", "EvaluateConfig", "FIDInceptionV3",
    "FeatureExtractor", "FolderFeatures", "GaussianStatistics", "InceptionExtractor",
    "InceptionScoreResult", "KIDResult", "ModuleExtractor", "PathLengthResult",
    "PrecisionRecallResult", "available_extractors", "clip_score_hessel",
    "clip_score_torchmetrics", "compute_metrics", "create_extractor", "density_coverage",
    "evaluate_folders", "extract_features", "fd_from_features", "feature_statistics", "fid",
    "folder_features", "frechet_distance", "inception_score", "kid", "list_images",
    "load_fid_inception", "perceptual_path_length", "precision_recall", "register_extractor",
    "resize_for_inception", "squared_l2_distance", "weights_dir",
]
