"""CLIP score conventions on hand-made vectors; PPL on a linear generator; interpolation."""

import numpy as np
import pytest
import torch
from torch_fidelity.noise import batch_lerp, batch_slerp_any

from imagesynth.errors import ConfigError
from imagesynth.metrics import (clip_score_hessel, clip_score_torchmetrics,
                                perceptual_path_length)
from imagesynth.metrics.ppl import lerp, slerp


def _pairs_with_cosines(cosines):
    image = np.tile(np.array([[1.0, 0.0]]), (len(cosines), 1))
    text = np.array([[c, np.sqrt(1 - c * c)] for c in cosines]) * 3.0  # norms do not matter
    return image, text


def test_clip_score_conventions():
    image, text = _pairs_with_cosines([0.3, -0.2])
    hessel = clip_score_hessel(image, text)
    np.testing.assert_allclose(hessel.per_pair, [0.75, 0.0], atol=1e-12)
    assert hessel.score == pytest.approx(0.375, abs=1e-12)
    tm = clip_score_torchmetrics(image, text)
    assert tm.score == pytest.approx(5.0, abs=1e-12)  # max(mean(30, −20), 0)
    image, text = _pairs_with_cosines([-0.5])
    assert clip_score_torchmetrics(image, text).score == 0.0


def test_clip_score_needs_pairs():
    with pytest.raises(ConfigError) as info:
        clip_score_hessel(np.ones((2, 4)), np.ones((3, 4)))
    assert info.value.field == "text_embeddings"


def test_ppl_of_linear_generator_is_twice_frobenius_norm():
    rng = np.random.default_rng(0)
    A = torch.from_numpy(rng.normal(size=(6, 4)))
    n = 4000
    result = perceptual_path_length(lambda z: z @ A.T, latent_dim=4, num_samples=n,
                                    discard_percentiles=None, dtype=torch.float64,
                                    generator=1)
    # d = ‖A(z₁ − z₀)ε‖²/ε², and z₁ − z₀ ~ N(0, 2I): E = 2 tr(AᵀA).
    expected = 2.0 * float((A * A).sum())
    assert abs(result.mean - expected) < 3 * result.std / np.sqrt(n)
    full = perceptual_path_length(lambda z: z @ A.T, latent_dim=4, num_samples=n,
                                  sampling="full", discard_percentiles=None,
                                  dtype=torch.float64, generator=1)
    assert abs(full.mean - expected) < 3 * full.std / np.sqrt(n)


def test_ppl_trims_percentiles_and_validates():
    result = perceptual_path_length(lambda z: z, latent_dim=3, num_samples=200, generator=0)
    assert len(result.distances) < 200
    with pytest.raises(ConfigError) as info:
        perceptual_path_length(lambda z: z, latent_dim=3, interpolation="cubic")
    assert info.value.field == "interpolation"


def test_interpolation_matches_torch_fidelity():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 8, generator=generator), torch.randn(64, 8, generator=generator)
    b[0] = 2 * a[0]  # collinear row takes the lerp fallback
    for t in (0.0, 1e-4, 0.37):
        torch.testing.assert_close(lerp(a, b, t), batch_lerp(a, b, t))
        torch.testing.assert_close(slerp(a, b, t), batch_slerp_any(a, b, t))
