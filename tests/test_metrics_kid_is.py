"""KID and Inception Score against torch-fidelity, brute force and closed forms."""

import numpy as np
import pytest
import torch
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

from imagesynth.errors import ConfigError, NumericError
from imagesynth.metrics import inception_score, kid


def test_kid_matches_torch_fidelity_when_samples_equal_subset_size():
    rng = np.random.default_rng(0)
    m, d = 200, 64
    # float64 on both sides: torch-fidelity keeps the input dtype, and float32 alone moves
    # the result by ~1e-5 relative.
    x = rng.normal(size=(m, d))
    y = 1.2 * rng.normal(size=(m, d)) + 0.05
    reference = kid_features_to_metric(
        torch.from_numpy(x), torch.from_numpy(y), kid_subsets=5, kid_subset_size=m,
        kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
        kid_kernel_poly_coef0=1, rng_seed=1, verbose=False)
    ours = kid(x, y, num_subsets=5, subset_size=m, generator=7)
    assert ours.mean == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-9)
    assert ours.std == pytest.approx(0.0, abs=1e-9)  # every subset is a permutation


def test_kid_equals_brute_force_double_loop():
    rng = np.random.default_rng(1)
    m, d = 20, 5
    x, y = rng.normal(size=(m, d)), rng.normal(size=(m, d)) + 0.3

    def k(a, b):
        return (a @ b / d + 1.0) ** 3

    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    expected = within / (m * (m - 1)) - 2 * cross / m ** 2
    assert kid(x, y, num_subsets=3, subset_size=m).mean == pytest.approx(expected, rel=1e-10)


def test_kid_subsets_are_seeded_and_capped():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(50, 4))
    a = kid(x, y, num_subsets=10, subset_size=30, generator=3)
    b = kid(x, y, num_subsets=10, subset_size=30, generator=torch.Generator().manual_seed(3))
    assert a == b and a.std > 0
    assert kid(x, y, num_subsets=2, subset_size=1000).subset_size == 50
    with pytest.raises(ConfigError) as info:
        kid(x, y, num_subsets=0)
    assert info.value.field == "num_subsets"


def test_is_matches_torch_fidelity():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(500, 20))
    reference = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    ours = inception_score(logits, splits=10, from_logits=True)
    assert ours.mean == pytest.approx(reference["inception_score_mean"], rel=1e-9)
    assert ours.std == pytest.approx(reference["inception_score_std"], rel=1e-6)
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    assert inception_score(probs, splits=10).mean == pytest.approx(ours.mean, rel=1e-9)


def test_is_one_hot_balanced_gives_num_classes_and_uniform_gives_one():
    num_classes = 7
    probs = np.eye(num_classes)[np.tile(np.arange(num_classes), 6)]  # 42 rows, 6 per split
    result = inception_score(probs, splits=6)
    assert result.mean == pytest.approx(num_classes, rel=1e-12)
    assert inception_score(np.full((30, 5), 0.2), splits=3).mean == pytest.approx(1.0, abs=1e-12)


def test_is_rejects_non_probabilities():
    with pytest.raises(NumericError, match="probability"):
        inception_score(np.ones((10, 3)), splits=2)
    with pytest.raises(ConfigError) as info:
        inception_score(np.full((4, 2), 0.5), splits=5)
    assert info.value.field == "splits"
