"""Samplers and schedules checked against k-diffusion on identical denoisers, sigmas and noise."""

import pytest
import torch
from torch import nn

import k_diffusion.external as K_external
import k_diffusion.sampling as K

from imagesynth.diffusion import (EDMDenoiser, GaussianMixture, discrete_sigmas, exponential_sigmas,
                                  generators_from_seeds, get_sampler, initial_noise, karras_sigmas,
                                  randn_like_per_sample, sample_ddpm, sample_dpmpp_2m, sample_euler,
                                  sample_euler_ancestral, sample_heun, scaled_linear_alphas_cumprod)
from imagesynth.errors import ConfigError, NumericError

SEEDS = [11, 22, 33]


class TinyNet(nn.Module):
    """A small random conv net with noise conditioning, so denoised depends nonlinearly on x and sigma."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 2, 3, padding=1)
        self.embed = nn.Linear(1, 8)

    def forward(self, x, c_noise):
        h = torch.tanh(self.conv1(x) + self.embed(c_noise[:, None])[:, :, None, None])
        return self.conv2(h)


@pytest.fixture(scope="module")
def denoiser():
    torch.manual_seed(0)
    return EDMDenoiser(TinyNet(), sigma_data=0.5).double().eval()


def start(sigmas):
    x, generators = initial_noise((2, 6, 6), SEEDS, sigmas[0], dtype=torch.float64)
    return x, generators


def twin_generators(x):
    """Generators in the state ours are in after drawing the starting noise."""
    twins = generators_from_seeds(SEEDS)
    randn_like_per_sample(x, twins)
    return twins


def twin_noise_sampler(x):
    """k-diffusion noise_sampler yielding what our per-sample generators yield."""
    twins = twin_generators(x)
    return lambda sigma, sigma_next: randn_like_per_sample(x, twins)


def test_schedules_match_k_diffusion():
    assert torch.allclose(karras_sigmas(10, 0.002, 80.0), K.get_sigmas_karras(10, 0.002, 80.0), rtol=1e-6)
    assert torch.allclose(exponential_sigmas(7, 0.03, 14.6), K.get_sigmas_exponential(7, 0.03, 14.6), rtol=1e-5)
    alphas_cumprod = scaled_linear_alphas_cumprod()
    reference = K_external.DiscreteEpsDDPMDenoiser(None, alphas_cumprod, quantize=False).get_sigmas(12)
    ours = discrete_sigmas(12, alphas_cumprod)
    assert ours.shape == (13,) and ours[-1] == 0
    assert torch.allclose(ours, reference, rtol=1e-5)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m"])
def test_deterministic_samplers_match_k_diffusion(denoiser, name):
    sigmas = karras_sigmas(6, 0.01, 10.0, dtype=torch.float64)
    x, generators = start(sigmas)
    ours = get_sampler(name)(denoiser, x, sigmas, generator=generators)
    reference = getattr(K, f"sample_{name}")(denoiser, x, sigmas, disable=True)
    assert (ours - reference).abs().max() <= 1e-5
    assert (ours - x).abs().max() > 0.1  # the comparison is not vacuous


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_euler_ancestral_matches_k_diffusion(denoiser, eta):
    sigmas = karras_sigmas(6, 0.01, 10.0, dtype=torch.float64)
    x, generators = start(sigmas)
    ours = sample_euler_ancestral(denoiser, x, sigmas, generator=generators, eta=eta, s_noise=0.9)
    reference = K.sample_euler_ancestral(denoiser, x, sigmas, disable=True, eta=eta, s_noise=0.9,
                                         noise_sampler=twin_noise_sampler(x))
    assert (ours - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("sampler_name", ["euler", "heun"])
def test_churn_matches_k_diffusion(denoiser, sampler_name, monkeypatch):
    sigmas = karras_sigmas(8, 0.01, 10.0, dtype=torch.float64)
    options = dict(s_churn=3.0, s_tmin=0.05, s_tmax=5.0, s_noise=1.003)
    x, generators = start(sigmas)
    ours = get_sampler(sampler_name)(denoiser, x, sigmas, generator=generators, **options)
    # k-diffusion draws torch.randn_like every step; hand it our per-sample noise on churned steps.
    twins, step = twin_generators(x), iter(range(len(sigmas) - 1))

    def fake_randn_like(tensor):
        i = next(step)
        churned = options["s_tmin"] <= sigmas[i] <= options["s_tmax"]
        return randn_like_per_sample(tensor, twins) if churned else torch.zeros_like(tensor)

    monkeypatch.setattr(torch, "randn_like", fake_randn_like)
    reference = getattr(K, f"sample_{sampler_name}")(denoiser, x, sigmas, disable=True, **options)
    monkeypatch.undo()
    assert (ours - reference).abs().max() <= 1e-5


def test_callback_sees_every_step(denoiser):
    sigmas = karras_sigmas(4, 0.01, 10.0, dtype=torch.float64)
    x, _ = start(sigmas)
    seen = []
    sample_heun(denoiser, x, sigmas, callback=lambda i, sigma, x_i, denoised: seen.append(
        (i, float(sigma), x_i.shape, denoised.shape)))
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert [s[1] for s in seen] == pytest.approx(sigmas[:-1].tolist())
    assert all(s[2] == s[3] == x.shape for s in seen)


@pytest.mark.parametrize("name,options", [("euler_ancestral", {}), ("ddpm", {}), ("heun", {"s_churn": 2.0})])
def test_batch_equals_single_and_seeds_are_deterministic(denoiser, name, options):
    sigmas = karras_sigmas(5, 0.01, 10.0, dtype=torch.float64)
    sampler = get_sampler(name)
    x, generators = start(sigmas)
    batch = sampler(denoiser, x, sigmas, generator=generators, **options)
    for i, seed in enumerate(SEEDS):
        x_i, generators_i = initial_noise((2, 6, 6), [seed], sigmas[0], dtype=torch.float64)
        single = sampler(denoiser, x_i, sigmas, generator=generators_i, **options)
        assert torch.allclose(single[0], batch[i], atol=1e-12)
    x, generators = start(sigmas)
    again = sampler(denoiser, x, sigmas, generator=generators, **options)
    assert again.numpy().tobytes() == batch.numpy().tobytes()


def test_single_gaussian_is_recovered():
    """Analytic case: for data N(mu, s^2 I) the ideal-denoiser ODE maps noise to N(mu, s^2 I)."""
    mixture = GaussianMixture(torch.tensor([[0.5, -1.0]]), torch.tensor([0.3]), torch.tensor([1.0]))
    sigmas = karras_sigmas(30, 0.002, 40.0, dtype=torch.float64)
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    samples = sample_heun(mixture, x, sigmas)
    assert samples.mean(0).tolist() == pytest.approx([0.5, -1.0], abs=0.02)
    assert samples.std(0).tolist() == pytest.approx([0.3, 0.3], abs=0.02)


def test_bad_input_names_the_field(denoiser):
    with pytest.raises(ConfigError) as error:
        karras_sigmas(0, 0.01, 10.0)
    assert error.value.field == "num_steps"
    x = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    with pytest.raises(ConfigError) as error:
        sample_euler(denoiser, x, torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64))
    assert error.value.field == "sigmas"
    with pytest.raises(ConfigError) as error:
        sample_euler_ancestral(denoiser, x, karras_sigmas(3, 0.01, 10.0))
    assert error.value.field == "generator"
    with pytest.raises(ConfigError) as error:
        sample_ddpm(denoiser, x, karras_sigmas(3, 0.01, 10.0), generator=generators_from_seeds([1, 2]))
    assert error.value.field == "generator"
    with pytest.raises(ConfigError) as error:
        get_sampler("plms")
    assert error.value.field == "sampler"


def test_nan_is_caught_before_it_reaches_the_output():
    calls = []

    def breaks_on_third_call(x, sigma):
        calls.append(1)
        return x * float("nan") if len(calls) == 3 else x * 0.5

    x = torch.ones(2, 3, 4, 4)
    with pytest.raises(NumericError) as error:
        sample_dpmpp_2m(breaks_on_third_call, x, karras_sigmas(5, 0.01, 10.0))
    assert error.value.field == "x" and "step 2" in error.value.message
    with pytest.raises(NumericError):
        sample_euler(breaks_on_third_call, x * float("nan"), karras_sigmas(5, 0.01, 10.0))
