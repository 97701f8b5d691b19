"""Denoisers: EDM preconditioning (with its training loss), eps/v adapters for discrete models, latents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, NumericError
from .noise import randn_like_per_sample
from .schedules import sigmas_from_alphas_cumprod


def append_dims(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-sample tensor [B] to [B, 1, ..., 1] so it broadcasts against an ndim tensor."""
    return values[(...,) + (None,) * (ndim - values.ndim)]


def _network_output(output: Any) -> torch.Tensor:
    # diffusers models return an output dataclass holding `.sample`; plain modules return a tensor.
    return output.sample if hasattr(output, "sample") else output


class EDMDenoiser(nn.Module):
    """Karras et al. (2022) preconditioning, Table 1: D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)."""

    def __init__(self, network: nn.Module, sigma_data: float = 0.5, P_mean: float = -1.2, P_std: float = 1.2):
        super().__init__()
        if not sigma_data > 0:
            raise ConfigError(f"must be > 0, got {sigma_data!r}", field="sigma_data")
        self.network = network
        self.sigma_data = sigma_data
        self.P_mean, self.P_std = P_mean, P_std

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for noise levels sigma of shape [B]."""
        sigma_data2 = self.sigma_data ** 2
        c_skip = sigma_data2 / (sigma ** 2 + sigma_data2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + sigma_data2) ** 0.5
        c_in = 1 / (sigma ** 2 + sigma_data2) ** 0.5
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def control_inputs(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(network input, timestep) a ControlNet beside this network sees: c_in x with whatever
        the network appends itself (coordinate channels), and c_noise."""
        _, _, c_in, c_noise = self.scalings(sigma)
        scaled = x * append_dims(c_in, x.ndim)
        network_input = getattr(self.network, "network_input", None)
        return (scaled if network_input is None else network_input(scaled)), c_noise

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        """Denoised estimate x0_hat of x at noise level sigma [B]."""
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        F_x = _network_output(self.network(x * append_dims(c_in, x.ndim), c_noise, **cond))
        return append_dims(c_skip, x.ndim) * x + append_dims(c_out, x.ndim) * F_x

    def sample_training_sigmas(self, batch_size: int, generator: torch.Generator | None = None,
                               device: str | torch.device = "cpu") -> torch.Tensor:
        """EDM training noise levels: ln(sigma) ~ N(P_mean, P_std^2)."""
        normal = torch.randn(batch_size, generator=generator, device=device)
        return (self.P_mean + self.P_std * normal).exp()

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, which makes the loss unit-weighted."""
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    def loss(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        """Per-sample EDM loss lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2 (mean over pixels), shape [B]."""
        if noise.shape != x0.shape:
            raise ConfigError(f"noise shape {tuple(noise.shape)} != data shape {tuple(x0.shape)}",
                              field="noise")
        noised = x0 + noise * append_dims(sigma, x0.ndim)
        # Equivalent to the network regressing its effective target (x0 - c_skip x) / c_out.
        squared_error = (self(noised, sigma, **cond) - x0) ** 2
        return append_dims(self.loss_weight(sigma), x0.ndim).mul(squared_error).flatten(1).mean(1)


class DiscreteDenoiser(nn.Module):
    """Base adapter for networks trained on discrete timesteps t in [0, T-1] with a given abar_t."""

    def __init__(self, network: Callable[..., Any], alphas_cumprod: torch.Tensor, quantize: bool = False):
        super().__init__()
        self.network = network
        sigmas = sigmas_from_alphas_cumprod(alphas_cumprod).float()
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())
        self.quantize = quantize

    @property
    def sigma_min(self) -> float:
        """Smallest noise level the network was trained on."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """Largest noise level the network was trained on."""
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for sigma by linear interpolation in log sigma (rounded if quantize)."""
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.log()
        dists = log_sigma - log_sigmas[:, None]
        if self.quantize:
            return dists.abs().argmin(dim=0).view(sigma.shape)
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
        low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * (low_idx + 1)).view(sigma.shape)

    def control_inputs(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(network input, timestep) the network (and a ControlNet beside it) sees at sigma."""
        # The network saw x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, i.e. our x scaled by 1/sqrt(sigma^2 + 1).
        c_in = append_dims(1 / (sigma ** 2 + 1) ** 0.5, x.ndim)
        return x * c_in, self.sigma_to_t(sigma).to(x.dtype)

    def _call_network(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        network_input, t = self.control_inputs(x, sigma)
        return _network_output(self.network(network_input, t, **cond))


class DiscreteEpsDenoiser(DiscreteDenoiser):
    """Adapter for eps-prediction networks (Stable Diffusion 1.x, DDPM): x0_hat = x - sigma eps_hat."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        """Denoised estimate from the predicted noise."""
        eps = self._call_network(x, sigma, **cond)
        return x - append_dims(sigma, x.ndim) * eps


class DiscreteVDenoiser(DiscreteDenoiser):
    """Adapter for v-prediction networks (SD 2.x 768): x0_hat = x/(sigma^2+1) - sigma v_hat/sqrt(sigma^2+1)."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        """Denoised estimate from the predicted velocity."""
        v = self._call_network(x, sigma, **cond)
        sigma = append_dims(sigma, x.ndim)
        return x / (sigma ** 2 + 1) - v * sigma / (sigma ** 2 + 1) ** 0.5


class LatentDenoiser(nn.Module):
    """Sample in an autoencoder's latent space: the inner denoiser works on scaled latents.

    `autoencoder` follows diffusers' AutoencoderKL: `.encode(images).latent_dist` and `.decode(z).sample`;
    images are in [-1, 1] and latents are multiplied by `scaling_factor` (0.18215 for SD 1.x).
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], autoencoder: nn.Module, scaling_factor: float):
        super().__init__()
        self.denoiser = denoiser
        self.autoencoder = autoencoder
        self.scaling_factor = scaling_factor

    def forward(self, z: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        """Denoised latents."""
        return self.denoiser(z, sigma, **cond)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: list[torch.Generator] | None = None) -> torch.Tensor:
        """Images [B,3,H,W] in [-1,1] -> scaled latents; the posterior mean, or a per-sample draw with generators."""
        posterior = self.autoencoder.encode(images).latent_dist
        if generator is None:
            z = posterior.mean
        else:
            z = posterior.mean + posterior.std * randn_like_per_sample(posterior.mean, generator)
        return z * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images [B,3,H,W] in [-1,1]; refuses NaN so it never reaches a picture."""
        if not torch.isfinite(z).all():
            raise NumericError("latents contain NaN or Inf", field="latents",
                               fix="lower the guidance scale or run in float32")
        return _network_output(self.autoencoder.decode(z / self.scaling_factor)).clamp(-1, 1)

    def preview_callback(self, on_preview: Callable[[int, torch.Tensor], None],
                         every: int = 1) -> Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]:
        """A sampler callback that decodes the current denoised latents every `every` steps for previews."""
        if every < 1:
            raise ConfigError(f"must be >= 1, got {every!r}", field="every")

        def callback(i: int, sigma: torch.Tensor, x: torch.Tensor, denoised: torch.Tensor) -> None:
            if i % every == 0:
                on_preview(i, self.decode(denoised))

        return callback
