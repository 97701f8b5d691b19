"""Precision/recall against torch-fidelity, density/coverage against prdc, batching invariance."""

import contextlib
import io

import numpy as np
import pytest
import torch
from prdc import compute_prdc
from torch_fidelity.metric_prc import calculate_precision_recall_full

from imagesynth.errors import ConfigError
from imagesynth.metrics import density_coverage, precision_recall


def _real_fake(n_real=400, n_fake=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_real, d)), 0.8 * rng.normal(size=(n_fake, d)) + 0.2


def test_precision_recall_match_torch_fidelity():
    real, fake = _real_fake()
    # torch-fidelity: features_1 = generated, features_2 = real.
    ref_precision, ref_recall = calculate_precision_recall_full(
        torch.from_numpy(fake), torch.from_numpy(real), 3, 10000)
    ours = precision_recall(real, fake, k=3)
    # Equal counts; torch-fidelity's mean is float32, so compare counts, not floats.
    assert round(ours.precision * len(fake)) == round(ref_precision * len(fake))
    assert round(ours.recall * len(real)) == round(ref_recall * len(real))
    assert ours.precision == pytest.approx(ref_precision, abs=1e-7)
    assert ours.recall == pytest.approx(ref_recall, abs=1e-7)
    assert 0 < ours.precision < 1 and 0 < ours.recall < 1


def test_density_coverage_and_pr_match_prdc():
    real, fake = _real_fake(seed=1)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = compute_prdc(real, fake, nearest_k=5)
    dc = density_coverage(real, fake, k=5)
    assert dc.density == pytest.approx(reference["density"], rel=1e-12)
    assert dc.coverage == pytest.approx(reference["coverage"], rel=1e-12)
    pr = precision_recall(real, fake, k=5)  # ≤ vs < differ only on ties
    assert pr.precision == pytest.approx(reference["precision"], rel=1e-12)
    assert pr.recall == pytest.approx(reference["recall"], rel=1e-12)


def test_block_size_does_not_change_results():
    real, fake = _real_fake(seed=2)
    whole = precision_recall(real, fake), density_coverage(real, fake)
    blocked = precision_recall(real, fake, block_rows=7), density_coverage(real, fake,
                                                                             block_rows=7)
    assert whole == blocked


def test_identical_sets_and_separated_clusters():
    real, _ = _real_fake(seed=3)
    same = precision_recall(real, real)
    assert (same.precision, same.recall) == (1.0, 1.0)
    assert density_coverage(real, real).coverage == 1.0
    far = precision_recall(real, real + 100.0)
    assert (far.precision, far.recall) == (0.0, 0.0)


def test_torch_fidelity_convention_case():
    generator = torch.Generator().manual_seed(42)
    fake = 0.1 * torch.randn(200, 16, generator=generator)
    real = 3.0 * torch.randn(200, 16, generator=generator)
    result = precision_recall(real, fake)
    assert result.precision > 0.8 and result.recall < 0.3


def test_bad_k_and_dims():
    real, fake = _real_fake(n_real=5, n_fake=5, seed=4)
    with pytest.raises(ConfigError) as info:
        precision_recall(real, fake, k=5)
    assert info.value.field == "k"
    with pytest.raises(ConfigError) as info:
        density_coverage(real, fake[:, :3])
    assert info.value.field == "fake"
