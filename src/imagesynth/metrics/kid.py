"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with a cubic polynomial kernel.

k(x, y) = (γ·xᵀy + c₀)^p with p = 3, γ = 1/d, c₀ = 1. For m generated and m reference rows,
MMD²_u = [Σ_{i≠j} k(xᵢ,xⱼ) + Σ_{i≠j} k(yᵢ,yⱼ)] / (m(m−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ) / m²
(the MMD-GAN estimator: the cross term keeps i = j). KID is the mean over random subsets; the
std is the population std (ddof 0), both as torch-fidelity reports them. Values slightly below
zero are legitimate: the estimator is unbiased.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ._arrays import as_features, as_generator, check_same_dims

#: torch-fidelity's default seed, so default subsets are reproducible run to run
DEFAULT_SEED = 2020


@dataclass(frozen=True)
class KIDResult:
    """Mean and std of MMD² over subsets, with the subset layout actually used."""

    mean: float
    std: float
    num_subsets: int
    subset_size: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    """k(x, y) = (γ xᵀy + c₀)^degree for all row pairs; γ defaults to 1/d."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """The MMD-GAN unbiased MMD² from the three (m, m) kernel matrices."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(features1: Any, features2: Any, num_subsets: int = 100, subset_size: int = 1000, *,
        degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
        generator: torch.Generator | int | None = None) -> KIDResult:
    """KID between two (N, d) feature sets; subset_size is capped at the smaller set's size."""
    f1 = as_features(features1, "features1")
    f2 = as_features(features2, "features2")
    check_same_dims(f1, f2, "features1", "features2")
    if num_subsets < 1:
        raise ConfigError(f"must be at least 1, got {num_subsets}", field="num_subsets")
    if subset_size < 2:
        raise ConfigError(f"must be at least 2, got {subset_size}", field="subset_size")
    # Like stylegan2-ada and clean-fid, small sets use all their rows instead of failing.
    m = min(subset_size, f1.shape[0], f2.shape[0])
    rng = as_generator(generator, DEFAULT_SEED)
    mmds = np.empty(num_subsets)
    for s in range(num_subsets):
        x = f1[torch.randperm(f1.shape[0], generator=rng)[:m].numpy()]
        y = f2[torch.randperm(f2.shape[0], generator=rng)[:m].numpy()]
        mmds[s] = mmd2_unbiased(polynomial_kernel(x, x, degree, gamma, coef0),
                                polynomial_kernel(x, y, degree, gamma, coef0),
                                polynomial_kernel(y, y, degree, gamma, coef0))
    return KIDResult(float(mmds.mean()), float(mmds.std()), num_subsets, m)
