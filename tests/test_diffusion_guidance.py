"""Guidance wrappers: CFG (incl. rescale vs diffusers), thresholding, CLIP guidance gradients."""

import math

import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from imagesynth.diffusion import (ClassifierFreeGuidance, CLIPGuidance, Scorer, clamp_denoised,
                                  dynamic_threshold, make_cutouts, sample_euler, spherical_distance_loss)
from imagesynth.errors import ConfigError


def conditional_denoiser(calls):
    """x0_hat = 0.7 x + context, recording each call's batch size."""

    def denoiser(x, sigma, context):
        calls.append(x.shape[0])
        return 0.7 * x + context[:, :, None, None] / (1 + sigma[:, None, None, None])

    return denoiser


def test_cfg_combines_branches_in_one_doubled_batch():
    calls = []
    inner = conditional_denoiser(calls)
    cond, uncond = {"context": torch.randn(2, 3)}, {"context": torch.randn(2, 3)}
    guided = ClassifierFreeGuidance(inner, cond, uncond, guidance_scale=5.0)
    x, sigma = torch.randn(2, 3, 4, 4), torch.tensor([2.0, 0.5])
    D = guided(x, sigma)
    assert calls == [4]
    D_c, D_u = inner(x, sigma, **cond), inner(x, sigma, **uncond)
    assert torch.allclose(D, D_u + 5.0 * (D_c - D_u), atol=1e-6)


def test_cfg_at_scale_one_skips_the_unconditional_pass():
    calls = []
    guided = ClassifierFreeGuidance(conditional_denoiser(calls), {"context": torch.ones(1, 3)},
                                    {"context": torch.zeros(1, 3)}, guidance_scale=1.0)
    guided(torch.randn(1, 3, 4, 4), torch.tensor([1.0]))
    assert calls == [1]


def test_cfg_rescale_matches_diffusers():
    calls = []
    inner = conditional_denoiser(calls)
    cond, uncond = {"context": torch.randn(2, 3)}, {"context": torch.randn(2, 3)}
    x, sigma = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor([3.0, 0.7], dtype=torch.float64)
    cond64 = {k: v.double() for k, v in cond.items()}
    uncond64 = {k: v.double() for k, v in uncond.items()}
    D = ClassifierFreeGuidance(inner, cond64, uncond64, 7.5, guidance_rescale=0.7)(x, sigma)
    s = sigma[:, None, None, None]
    eps_c, eps_u = (x - inner(x, sigma, **cond64)) / s, (x - inner(x, sigma, **uncond64)) / s
    eps = rescale_noise_cfg(eps_u + 7.5 * (eps_c - eps_u), eps_c, guidance_rescale=0.7)
    assert torch.allclose(D, x - s * eps, atol=1e-10)


def test_cfg_rejects_bad_settings():
    with pytest.raises(ConfigError) as error:
        ClassifierFreeGuidance(lambda x, s: x, {"context": 1}, {"other": 1}, 5.0)
    assert error.value.field == "uncond"
    with pytest.raises(ConfigError) as error:
        ClassifierFreeGuidance(lambda x, s: x, {}, {}, float("nan"))
    assert error.value.field == "guidance_scale"


def test_clamp_and_dynamic_threshold():
    big = lambda x, sigma: x * 3  # noqa: E731
    x, sigma = torch.linspace(-1, 1, 200).view(2, 1, 10, 10), torch.ones(2)
    assert clamp_denoised(big)(x, sigma).abs().max() == 1.0
    thresholded = dynamic_threshold(big, percentile=0.9)(x, sigma)
    assert thresholded.abs().max() <= 1.0 + 1e-6
    # Values below the quantile keep their ordering (rescaled, not clipped flat).
    assert (thresholded.flatten().diff() >= 0).all()
    small = dynamic_threshold(lambda x, sigma: x * 0.5)(x, sigma)
    assert torch.allclose(small, x * 0.5)  # s is floored at 1: in-range outputs are untouched


class ProjectionScorer:
    """A differentiable toy CLIP: fixed random linear maps from pooled images and bag-of-letters text."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.image_projection = torch.randn(3 * 4 * 4, 8, generator=generator, dtype=torch.float64)
        self.text_projection = torch.randn(26, 8, generator=generator, dtype=torch.float64)

    def embed_text(self, texts):
        counts = torch.zeros(len(texts), 26, dtype=torch.float64)
        for row, text in enumerate(texts):
            for letter in text.lower():
                if letter.isalpha():
                    counts[row, ord(letter) - 97] += 1
        return counts @ self.text_projection

    def embed_image(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1) @ self.image_projection


def test_spherical_distance_is_the_squared_great_circle_distance():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    assert spherical_distance_loss(a, b).item() == pytest.approx(2 * (math.pi / 4) ** 2)
    assert spherical_distance_loss(a, a).item() == pytest.approx(0.0)


def test_cutouts_are_seeded_and_batch_independent():
    images = torch.rand(3, 3, 16, 16)
    first = make_cutouts(images, 8, 4, torch.Generator().manual_seed(1))
    second = make_cutouts(images[1:2], 8, 4, torch.Generator().manual_seed(1))
    assert first.shape == (12, 3, 8, 8)
    assert torch.equal(first.view(4, 3, 3, 8, 8)[:, 1], second)


@pytest.mark.parametrize("through_denoiser", [True, False])
def test_clip_guidance_gradient_and_effect(through_denoiser):
    scorer = ProjectionScorer()
    assert isinstance(scorer, Scorer)
    weight = torch.tensor(0.8, dtype=torch.float64)
    inner = lambda x, sigma: torch.tanh(weight * x)  # noqa: E731
    make = lambda scale: CLIPGuidance(inner, scorer, ["a red apple"], scale,  # noqa: E731
                                      torch.Generator().manual_seed(3), cut_size=8, num_cutouts=3,
                                      through_denoiser=through_denoiser)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 0.5], dtype=torch.float64)
    guided = make(0.3)(x, sigma)
    # Autograd reference with the same cutouts (same generator seed).
    reference = make(0.3)
    x_ref = x.clone().requires_grad_()
    denoised = inner(x_ref, sigma)
    wrt = x_ref if through_denoiser else denoised
    grad = torch.autograd.grad(reference.loss(denoised).sum(), wrt)[0]
    assert torch.allclose(guided, denoised.detach() - 0.3 * 0.25 * grad, atol=1e-12)
    # Finite-difference check of that gradient along a random direction.
    direction = torch.randn_like(x)
    h = 1e-6
    if through_denoiser:
        loss_at = lambda step: make(0.0).loss(inner(x + step * direction, sigma)).sum()  # noqa: E731
    else:
        loss_at = lambda step: make(0.0).loss(inner(x, sigma) + step * direction).sum()  # noqa: E731
    finite_difference = (loss_at(h) - loss_at(-h)) / (2 * h)
    assert (grad * direction).sum().item() == pytest.approx(finite_difference.item(), rel=1e-5)
    # A small guided step lowers the loss of the denoised estimate.
    before = make(0.0).loss(inner(x, sigma)).sum()
    after = make(0.0).loss(guided).sum()
    assert after < before


def test_clip_guidance_runs_inside_a_sampler():
    scorer = ProjectionScorer()
    inner = lambda x, sigma: torch.tanh(x)  # noqa: E731
    sigmas = torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    plain = sample_euler(inner, x, sigmas)
    guided = sample_euler(CLIPGuidance(inner, scorer, ["sky"], 50.0, torch.Generator().manual_seed(0),
                                       cut_size=8, num_cutouts=2), x, sigmas)
    target = torch.nn.functional.normalize(scorer.embed_text(["sky"]), dim=-1)
    distance = lambda image: spherical_distance_loss(scorer.embed_image((image + 1) / 2), target)  # noqa: E731
    assert distance(guided) < distance(plain)
