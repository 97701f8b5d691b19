"""k-NN manifold metrics: precision & recall (Kynkäänniemi et al. 2019), density & coverage
(Naeem et al. 2020).

Each set's manifold is the union of balls around its samples, the radius of sample i being the
distance to its k-th nearest neighbour within the set (itself excluded). Distances are float64
and computed in row blocks, so memory stays at a few hundred MB whatever N is.

- precision: share of generated samples inside the real manifold (d ≤ r, torch-fidelity/NVlabs);
- recall: share of real samples inside the generated manifold (d ≤ r);
- density: (1/k) · mean over generated samples of how many real balls contain it (d < r, prdc);
- coverage: share of real samples whose ball holds at least one generated sample (d < r, prdc).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import ConfigError
from ._arrays import as_features, check_same_dims

#: elements per distance block (float64): 2^25 · 8 B = 256 MiB
BLOCK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class PrecisionRecallResult:
    """Precision and recall in [0, 1], with the neighbourhood size used."""

    precision: float
    recall: float
    k: int


@dataclass(frozen=True)
class DensityCoverageResult:
    """Density (unbounded, 1 on matching distributions) and coverage in [0, 1]."""

    density: float
    coverage: float
    k: int


def _distance_blocks(rows: torch.Tensor, columns: torch.Tensor,
                     block_rows: int | None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, (b, M) Euclidean distances) for consecutive row blocks."""
    b = block_rows or max(1, BLOCK_ELEMENTS // max(1, columns.shape[0]))
    for start in range(0, rows.shape[0], b):
        yield start, torch.cdist(rows[start:start + b], columns)


def knn_radii(features: torch.Tensor, k: int, block_rows: int | None = None) -> torch.Tensor:
    """(N,) distance from each row to its k-th nearest other row."""
    radii = torch.empty(features.shape[0], dtype=features.dtype)
    for start, block in _distance_blocks(features, features, block_rows):
        # The (k+1)-th smallest: every row is its own nearest neighbour at distance 0.
        radii[start:start + block.shape[0]] = block.kthvalue(k + 1, dim=1).values
    return radii


def _prepare(real: Any, fake: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    r = as_features(real, "real")
    f = as_features(fake, "fake")
    check_same_dims(r, f, "real", "fake")
    if k < 1:
        raise ConfigError(f"must be at least 1, got {k}", field="k")
    smallest = min(r.shape[0], f.shape[0])
    if k >= smallest:
        raise ConfigError(f"k={k} needs more than {k} samples per set; the smaller set has "
                          f"{smallest}", field="k", fix="lower k or pass more samples")
    return torch.from_numpy(np.ascontiguousarray(r)), torch.from_numpy(np.ascontiguousarray(f))


def precision_recall(real: Any, fake: Any, k: int = 3, *,
                     block_rows: int | None = None) -> PrecisionRecallResult:
    """Improved precision and recall of `fake` against `real` with k-NN balls (d ≤ r)."""
    r, f = _prepare(real, fake, k)
    radius_real, radius_fake = knn_radii(r, k, block_rows), knn_radii(f, k, block_rows)
    inside_real = torch.zeros(f.shape[0], dtype=torch.bool)
    for start, block in _distance_blocks(f, r, block_rows):  # (b, N_real)
        inside_real[start:start + block.shape[0]] = (block <= radius_real[None, :]).any(dim=1)
    inside_fake = torch.zeros(r.shape[0], dtype=torch.bool)
    for start, block in _distance_blocks(r, f, block_rows):  # (b, N_fake)
        inside_fake[start:start + block.shape[0]] = (block <= radius_fake[None, :]).any(dim=1)
    return PrecisionRecallResult(float(inside_real.double().mean()),
                                 float(inside_fake.double().mean()), k)


def density_coverage(real: Any, fake: Any, k: int = 5, *,
                     block_rows: int | None = None) -> DensityCoverageResult:
    """Density and coverage of `fake` against the real k-NN balls (d < r, as in prdc)."""
    r, f = _prepare(real, fake, k)
    radius_real = knn_radii(r, k, block_rows)
    balls_containing = torch.zeros(f.shape[0], dtype=torch.float64)
    for start, block in _distance_blocks(f, r, block_rows):  # (b, N_real)
        balls_containing[start:start + block.shape[0]] = \
            (block < radius_real[None, :]).sum(dim=1).double()
    covered = torch.zeros(r.shape[0], dtype=torch.bool)
    for start, block in _distance_blocks(r, f, block_rows):  # (b, N_fake)
        rows = slice(start, start + block.shape[0])
        covered[rows] = block.min(dim=1).values < radius_real[rows]
    return DensityCoverageResult(float(balls_containing.mean() / k),
                                 float(covered.double().mean()), k)
