"""Denoisers: EDM preconditioning vs k-diffusion, eps/v adapters vs diffusers' own schedulers."""

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, UNet2DModel
from torch import nn

import k_diffusion.external as K_external
import k_diffusion.layers as K_layers

from imagesynth.diffusion import (DiscreteEpsDenoiser, DiscreteVDenoiser, EDMDenoiser, LatentDenoiser,
                                  generators_from_seeds, randn_like_per_sample, sample_ddpm, sample_euler)
from imagesynth.errors import NumericError

SEEDS = [5, 6]


class TinyNet(nn.Module):
    """Random conv net taking (x, noise conditioning)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.embed = nn.Linear(1, 3)

    def forward(self, x, c_noise):
        return torch.tanh(self.conv(x)) + self.embed(c_noise[:, None].to(x))[:, :, None, None]


def test_edm_denoiser_and_loss_match_k_diffusion():
    torch.manual_seed(0)
    net = TinyNet().double()
    ours = EDMDenoiser(net, sigma_data=0.5)
    # k-diffusion feeds sigma itself as the noise conditioning; EDM uses c_noise = ln(sigma) / 4.
    reference = K_layers.Denoiser(lambda x, sigma: net(x, sigma.log() / 4), sigma_data=0.5)
    x0 = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    noise = torch.randn_like(x0)
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0], dtype=torch.float64)
    assert torch.allclose(ours(x0 + sigma[:, None, None, None] * noise, sigma),
                          reference(x0 + sigma[:, None, None, None] * noise, sigma), atol=1e-12)
    assert torch.allclose(ours.loss(x0, noise, sigma), reference.loss(x0, noise, sigma), rtol=1e-10)
    sigmas = ours.sample_training_sigmas(20000, torch.Generator().manual_seed(0))
    assert sigmas.log().mean().item() == pytest.approx(-1.2, abs=0.03)


@pytest.mark.parametrize("ours_cls,reference_cls", [
    (DiscreteEpsDenoiser, K_external.DiscreteEpsDDPMDenoiser),
    (DiscreteVDenoiser, K_external.DiscreteVDDPMDenoiser),
])
def test_discrete_adapters_match_k_diffusion(ours_cls, reference_cls):
    torch.manual_seed(0)
    net = TinyNet()
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ours = ours_cls(net, scheduler.alphas_cumprod)
    reference = reference_cls(net, scheduler.alphas_cumprod, quantize=False)
    x = torch.randn(3, 3, 5, 5)
    sigma = torch.tensor([0.05, 1.3, 14.0])
    assert torch.allclose(ours.sigma_to_t(sigma), reference.sigma_to_t(sigma), atol=1e-4)
    assert torch.allclose(ours(x, sigma), reference(x, sigma), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()


@pytest.mark.parametrize("prediction_type,adapter", [("epsilon", DiscreteEpsDenoiser),
                                                     ("v_prediction", DiscreteVDenoiser)])
def test_adapters_reproduce_diffusers_euler(tiny_unet, prediction_type, adapter):
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       prediction_type=prediction_type, use_karras_sigmas=True)
    scheduler.set_timesteps(6)
    generators = generators_from_seeds(SEEDS)
    x = randn_like_per_sample(torch.empty(2, 3, 8, 8), generators) * scheduler.init_noise_sigma
    expected = x.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_output = tiny_unet(scheduler.scale_model_input(expected, t), t).sample
            expected = scheduler.step(model_output, t, expected).prev_sample
    denoiser = adapter(tiny_unet, scheduler.alphas_cumprod)
    ours = sample_euler(denoiser, x, scheduler.sigmas.clone())
    assert (ours - expected).abs().max() <= 1e-4
    assert (ours - x).abs().max() > 1.0


def test_sample_ddpm_reproduces_diffusers_ddpm(tiny_unet):
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False)
    scheduler.set_timesteps(5)
    generators = generators_from_seeds(SEEDS)
    x_vp = randn_like_per_sample(torch.empty(2, 3, 8, 8), generators)
    expected = x_vp.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            expected = scheduler.step(tiny_unet(expected, t).sample, t, expected,
                                      generator=generators).prev_sample
    denoiser = DiscreteEpsDenoiser(tiny_unet, scheduler.alphas_cumprod)
    sigmas = torch.cat([denoiser.sigmas[scheduler.timesteps], torch.zeros(1)])
    # Our frame is x = x_vp / sqrt(abar) = x_vp * sqrt(1 + sigma^2).
    ours_generators = generators_from_seeds(SEEDS)
    x = randn_like_per_sample(x_vp, ours_generators) * (1 + sigmas[0] ** 2) ** 0.5
    ours = sample_ddpm(denoiser, x, sigmas, generator=ours_generators)
    assert (ours - expected).abs().max() <= 1e-4
    assert (ours - x_vp).abs().max() > 0.5


def test_latent_denoiser_decodes_and_previews():
    torch.manual_seed(0)
    autoencoder = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8,), latent_channels=2,
                                norm_num_groups=4, layers_per_block=1).eval()
    latent = LatentDenoiser(lambda z, sigma: z * 0.5, autoencoder, scaling_factor=0.5)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    z = latent.encode(images)
    assert z.shape == (2, 2, 8, 8)
    z_sampled = latent.encode(images, generator=generators_from_seeds(SEEDS))
    assert not torch.equal(z, z_sampled)
    previews = []
    callback = latent.preview_callback(lambda i, image: previews.append((i, image.shape)), every=2)
    for i in range(4):
        callback(i, torch.tensor(1.0), z, latent(z, torch.ones(2)))
    assert previews == [(0, (2, 3, 8, 8)), (2, (2, 3, 8, 8))]
    decoded = latent.decode(z)
    assert decoded.min() >= -1 and decoded.max() <= 1
    with pytest.raises(NumericError) as error:
        latent.decode(z * float("nan"))
    assert error.value.field == "latents"
