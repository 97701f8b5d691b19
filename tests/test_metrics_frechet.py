"""Fréchet distance: analytic cases and cross-checks against pytorch-fid and torch-fidelity."""

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from imagesynth.errors import ConfigError, NumericError
from imagesynth.metrics import fd_from_features, feature_statistics, frechet_distance


def _feature_pair(n, d, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing, 1.1 * (rng.normal(size=(n, d)) @ mixing) + 0.1


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
@pytest.mark.parametrize("n,d,tolerance", [(4000, 64, 1e-9), (3000, 128, 1e-9), (100, 200, 1e-6)])
def test_matches_pytorch_fid(method, n, d, tolerance):
    x, y = _feature_pair(n, d)
    s1, s2 = feature_statistics(x), feature_statistics(y)
    reference = calculate_frechet_distance(s1.mean, s1.covariance, s2.mean, s2.covariance)
    ours = frechet_distance(s1.mean, s1.covariance, s2.mean, s2.covariance, method=method)
    assert ours == pytest.approx(reference, rel=tolerance)


def test_statistics_match_pytorch_fid_conventions():
    x, _ = _feature_pair(500, 16)
    stats = feature_statistics(x)
    np.testing.assert_allclose(stats.mean, np.mean(x, axis=0), rtol=1e-14)
    np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-14)


def test_matches_torch_fidelity_on_features():
    x, y = _feature_pair(2000, 64, seed=3)
    reference = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(x)),
                                         fid_features_to_statistics(torch.from_numpy(y)),
                                         False)["frechet_inception_distance"]
    assert fd_from_features(torch.from_numpy(x), y) == pytest.approx(reference, rel=1e-9)


def test_identity_covariances_unit_mean_shift_gives_dimension():
    d = 256  # pytorch-fid's own test uses 2048; the identity holds at any d
    mu2 = np.zeros(d)
    mu1 = np.ones(d)  # ‖μ₁ − μ₂‖² = d, the traces cancel: FD = d
    assert frechet_distance(mu1, np.eye(d), mu2, np.eye(d)) == pytest.approx(d, rel=1e-12)
    unit = np.zeros(d)
    unit[5] = 1.0
    assert frechet_distance(unit, np.eye(d), mu2, np.eye(d)) == pytest.approx(1.0, abs=1e-9)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(1)
    d = 300
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    for method in ("eigh", "sqrtm"):
        value = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
        assert value == pytest.approx(expected, rel=1e-10)


def test_identical_and_symmetric():
    x, y = _feature_pair(1000, 32, seed=4)
    s = feature_statistics(x)
    assert abs(frechet_distance(s.mean, s.covariance, s.mean, s.covariance)) < \
        1e-6 * np.trace(s.covariance)
    assert fd_from_features(x, y) == pytest.approx(fd_from_features(y, x), rel=1e-8)


def test_rank_deficient_is_finite_and_nonnegative():
    x, y = _feature_pair(50, 120, seed=5)
    assert np.isfinite(fd_from_features(x, y)) and fd_from_features(x, y) >= 0


def test_bad_inputs_name_the_problem():
    x, y = _feature_pair(100, 8)
    with pytest.raises(ConfigError, match="feature dims") as info:
        fd_from_features(x, y[:, :4])
    assert info.value.field == "features2"
    with pytest.raises(ConfigError, match="at least 2") as info:
        fd_from_features(x[:1], y)
    assert info.value.field == "features1"
    x_nan = x.copy()
    x_nan[3, 2] = np.nan
    with pytest.raises(NumericError, match="NaN") as info:
        fd_from_features(x, x_nan)
    assert info.value.field == "features2"
    with pytest.raises(ConfigError, match="2-D"):
        fd_from_features(x[0], y)
    with pytest.raises(ConfigError, match="method"):
        fd_from_features(x, y, method="svd")
