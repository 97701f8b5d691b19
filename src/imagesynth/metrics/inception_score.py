"""Inception Score (Salimans et al. 2016) for any classifier's class probabilities.

IS = exp E_x[ KL(p(y|x) ‖ p(y)) ], computed on `splits` consecutive chunks; reported as the mean
and population std over chunks (torch-fidelity's convention). Shuffling, when wanted, is the
caller's choice (pass a permuted array), so the result is a pure function of its input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, NumericError
from ._arrays import as_features


@dataclass(frozen=True)
class InceptionScoreResult:
    """Mean and std of the per-split scores."""

    mean: float
    std: float
    splits: int


def inception_score(probs: Any, splits: int = 10, *, from_logits: bool = False) -> \
        InceptionScoreResult:
    """IS from (N, C) probabilities (rows sum to 1), or from logits with `from_logits=True`."""
    values = as_features(probs, "probs", min_samples=1)
    if not 1 <= splits <= values.shape[0]:
        raise ConfigError(f"must be between 1 and the sample count {values.shape[0]}, got "
                          f"{splits}", field="splits")
    if from_logits:
        log_p = torch.log_softmax(torch.from_numpy(values), dim=1).numpy()
        p = np.exp(log_p)
    else:
        p = values
        if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
            raise NumericError("rows are not probability distributions", field="probs",
                               fix="pass softmax outputs, or logits with from_logits=True")
        with np.errstate(divide="ignore"):
            log_p = np.log(p)
    n = p.shape[0]
    scores = []
    for i in range(splits):
        chunk, log_chunk = p[i * n // splits:(i + 1) * n // splits], \
            log_p[i * n // splits:(i + 1) * n // splits]
        q = chunk.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            # 0·log 0 = 0: classes a sample gives no mass contribute nothing to its KL.
            kl = np.where(chunk > 0, chunk * (log_chunk - np.log(q)), 0.0).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return InceptionScoreResult(float(np.mean(scores)), float(np.std(scores)), splits)
