"""The diffusion engine: one denoiser contract D(x, sigma, **cond) -> x0_hat, schedules, samplers,
guidance wrappers and image edits."""

from .denoisers import (DiscreteDenoiser, DiscreteEpsDenoiser, DiscreteVDenoiser, EDMDenoiser,
                        LatentDenoiser, append_dims)
from .edits import (InpaintDenoiser, blur_mask, check_mask, img2img, img2img_sigmas, noise_to_sigma,
                    pad_for_outpaint, truncate_sigmas)
from .guidance import (ClassifierFreeGuidance, CLIPGuidance, PerSampleDenoiser, Scorer, clamp_denoised,
                       dynamic_threshold, make_cutouts, spherical_distance_loss)
from .noise import generators_from_seeds, initial_noise, randn_like_per_sample
from .samplers import (SAMPLERS, Denoiser, StepCallback, ancestral_step, get_sampler, sample_ddpm,
                       sample_dpmpp_2m, sample_euler, sample_euler_ancestral, sample_heun, to_d)
from .schedules import (discrete_sigmas, exponential_sigmas, karras_sigmas, scaled_linear_alphas_cumprod,
                        sigmas_from_alphas_cumprod, validate_sigmas)
from .toy import GaussianMixture, sliced_wasserstein

__all__ = [
    "SAMPLERS", "CLIPGuidance", "ClassifierFreeGuidance", "Denoiser", "DiscreteDenoiser",
    "DiscreteEpsDenoiser", "DiscreteVDenoiser", "EDMDenoiser", "GaussianMixture", "InpaintDenoiser",
    "LatentDenoiser", "PerSampleDenoiser", "StepCallback", "Scorer", "ancestral_step", "append_dims", "blur_mask",
    "check_mask", "clamp_denoised", "discrete_sigmas", "dynamic_threshold", "exponential_sigmas",
    "generators_from_seeds", "get_sampler", "img2img", "img2img_sigmas", "initial_noise", "karras_sigmas",
    "make_cutouts", "noise_to_sigma", "pad_for_outpaint", "randn_like_per_sample", "sample_ddpm",
    "sample_dpmpp_2m", "sample_euler", "sample_euler_ancestral", "sample_heun",
    "scaled_linear_alphas_cumprod", "sigmas_from_alphas_cumprod", "sliced_wasserstein", "spherical_distance_loss",
    "to_d", "truncate_sigmas", "validate_sigmas",
]
