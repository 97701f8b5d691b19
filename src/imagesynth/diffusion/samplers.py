"""Samplers: pure functions `sample_X(denoiser, x, sigmas, *, generator, callback, **options) -> x`.

Each reproduces its k-diffusion counterpart step for step (Karras et al. 2022 notation); noise comes
only from explicit per-sample generators, never from the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from ..errors import ConfigError, NumericError
from .noise import randn_like_per_sample
from .schedules import validate_sigmas


class Denoiser(Protocol):
    """The one denoiser contract: `denoiser(x, sigma, **cond) -> x0_hat`, sigma of shape [B]."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor: ...


#: callback(i, sigma, x, denoised), called once per step before x is updated
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
Generators = Sequence[torch.Generator] | torch.Generator | None


def _generators(generator: Generators, x: torch.Tensor, sampler: str) -> list[torch.Generator]:
    if generator is None:
        raise ConfigError(f"{sampler} adds noise, so it needs one torch.Generator per image",
                          field="generator", fix="pass generator=generators_from_seeds(seeds)")
    return [generator] if isinstance(generator, torch.Generator) else list(generator)


def _prepare(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    validate_sigmas(sigmas)
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ConfigError("must be a tensor of shape [B, ...]", field="x")
    if not torch.isfinite(x).all():
        raise NumericError("the starting latents contain NaN or Inf", field="x")
    return sigmas.to(device=x.device, dtype=x.dtype)


def _check_finite(x: torch.Tensor, i: int, sigma: torch.Tensor | float) -> None:
    # A sum is non-finite iff some element is (or the values are ~1e38, broken anyway): one
    # cheap reduction per step stops NaN before it can reach a decoded image.
    total = x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    if not torch.isfinite(total):
        raise NumericError(f"NaN or Inf appeared in x at step {i} (sigma={float(sigma):.4g})", field="x",
                           fix="lower the guidance scale or learning rate, or use float32 instead of float16")


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Karras ODE derivative dx/dsigma = (x - D(x; sigma)) / sigma (Eq. 4 with s=1)."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float | torch.Tensor, sigma_to: float | torch.Tensor,
                   eta: float = 1.0) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """Split a step into a deterministic move to sigma_down and fresh noise of std sigma_up."""
    if not eta:
        return sigma_to, 0.0
    if isinstance(sigma_from, torch.Tensor) or isinstance(sigma_to, torch.Tensor):
        sigma_up = torch.minimum(torch.as_tensor(sigma_to), eta * (
            sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
        return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up
    # Python floats: the sampler's per-step path, where scalar tensor ops cost more than they compute.
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2)
                                             / sigma_from ** 2))
    return math.sqrt(max(sigma_to ** 2 - sigma_up ** 2, 0.0)), sigma_up


def _churn_gamma(sigma: torch.Tensor, num_steps: int, S_churn: float, S_tmin: float, S_tmax: float) -> float:
    # Algorithm 2, line 4: gamma_i = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax].
    return min(S_churn / num_steps, 2 ** 0.5 - 1) if S_tmin <= sigma <= S_tmax else 0.0


def _check_churn(s_churn: float, s_noise: float) -> None:
    if not (math.isfinite(s_churn) and s_churn >= 0):
        raise ConfigError(f"must be >= 0, got {s_churn!r}", field="s_churn")
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ConfigError(f"must be >= 0, got {s_noise!r}", field="s_noise")


@torch.no_grad()
def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                 generator: Generators = None, callback: StepCallback | None = None,
                 cond: dict | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
    """Algorithm 2 of Karras et al. (2022) with Euler steps (1 NFE per step)."""
    return _sample_edm(denoiser, x, sigmas, generator, callback, cond or {}, s_churn, s_tmin, s_tmax,
                       s_noise, second_order=False)


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                generator: Generators = None, callback: StepCallback | None = None,
                cond: dict | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
    """Algorithm 2 of Karras et al. (2022): Heun steps with optional churn (2 NFE per step, 1 on the last)."""
    return _sample_edm(denoiser, x, sigmas, generator, callback, cond or {}, s_churn, s_tmin, s_tmax,
                       s_noise, second_order=True)


def _sample_edm(denoiser, x, sigmas, generator, callback, cond, S_churn, S_tmin, S_tmax, S_noise,
                second_order: bool) -> torch.Tensor:
    sigmas = _prepare(x, sigmas)
    _check_churn(S_churn, S_noise)
    num_steps = len(sigmas) - 1
    batch = x.shape[0]
    # Step sizes as Python floats: scalar tensor arithmetic costs more than it computes.
    values = sigmas.tolist()
    generators = _generators(generator, x, "s_churn > 0") if S_churn > 0 else None
    for i in range(num_steps):
        sigma, sigma_next = values[i], values[i + 1]
        gamma = _churn_gamma(sigma, num_steps, S_churn, S_tmin, S_tmax)
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            # Lines 5-6: raise the noise level to t_hat = t_i (1 + gamma_i).
            eps = randn_like_per_sample(x, generators) * S_noise
            x = x + eps * (sigma_hat ** 2 - sigma ** 2) ** 0.5
        denoised = denoiser(x, x.new_full((batch,), sigma_hat), **cond)
        if callback is not None:
            callback(i, sigmas[i], x, denoised)
        if not second_order or sigma_next == 0:
            # Euler step x + (x - D) / sigma_hat * (sigma_next - sigma_hat), as one fused lerp.
            x = torch.lerp(x, denoised, 1 - sigma_next / sigma_hat)
        else:
            # Lines 9-11: second-order correction with the derivative at t_{i+1}.
            dt = sigma_next - sigma_hat
            d = (x - denoised) / sigma_hat
            x_2 = x + d * dt
            denoised_2 = denoiser(x_2, x.new_full((batch,), sigma_next), **cond)
            d_2 = (x_2 - denoised_2) / sigma_next
            x = x + (d + d_2) * (dt / 2)
        _check_finite(x, i, sigma)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                           generator: Generators = None, callback: StepCallback | None = None,
                           cond: dict | None = None, eta: float = 1.0,
                           s_noise: float = 1.0) -> torch.Tensor:
    """Ancestral sampling with Euler steps: step to sigma_down, then add noise of std sigma_up."""
    sigmas = _prepare(x, sigmas)
    if not (math.isfinite(eta) and eta >= 0):
        raise ConfigError(f"must be >= 0, got {eta!r}", field="eta")
    cond = cond or {}
    generators = _generators(generator, x, "sample_euler_ancestral") if eta > 0 else None
    batch = x.shape[0]
    values = sigmas.tolist()
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = values[i], values[i + 1]
        denoised = denoiser(x, x.new_full((batch,), sigma), **cond)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if callback is not None:
            callback(i, sigmas[i], x, denoised)
        x = torch.lerp(x, denoised, 1 - sigma_down / sigma)
        if sigma_next > 0 and eta > 0:
            x = torch.add(x, randn_like_per_sample(x, generators), alpha=s_noise * sigma_up)
        _check_finite(x, i, sigma)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                    generator: Generators = None, callback: StepCallback | None = None,
                    cond: dict | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in k-diffusion's form; deterministic."""
    sigmas = _prepare(x, sigmas)
    cond = cond or {}
    batch = x.shape[0]
    values = sigmas.tolist()
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = values[i], values[i + 1]
        denoised = denoiser(x, x.new_full((batch,), sigma), **cond)
        if callback is not None:
            callback(i, sigmas[i], x, denoised)
        # Half-log-SNR time t = -log(sigma); h is the step in t (infinite at sigma_next = 0).
        t = -math.log(sigma)
        h = -math.log(sigma_next) - t if sigma_next > 0 else math.inf
        if old_denoised is None or sigma_next == 0:
            D = denoised
        else:
            r = (t + math.log(values[i - 1])) / h
            D = torch.lerp(denoised, old_denoised, -1 / (2 * r))
        # x_next = (sigma_next / sigma) x - expm1(-h) D, and sigma_next / sigma = exp(-h): a lerp.
        x = torch.lerp(D, x, sigma_next / sigma)
        old_denoised = denoised
        _check_finite(x, i, sigma)
    return x


@torch.no_grad()
def sample_ddpm(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                generator: Generators = None, callback: StepCallback | None = None,
                cond: dict | None = None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Eq. 7): draw x_{t-1} ~ q(x_{t-1} | x_t, x0_hat).

    Works in the variance-preserving frame x_vp = x / sqrt(1 + sigma^2) with abar = 1 / (1 + sigma^2)
    and the "fixed small" posterior variance, as diffusers' DDPMScheduler does.
    """
    sigmas = _prepare(x, sigmas)
    cond = cond or {}
    generators = _generators(generator, x, "sample_ddpm")
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in, **cond)
        if callback is not None:
            callback(i, sigma, x, denoised)
        abar_t, abar_prev = 1 / (1 + sigma ** 2), 1 / (1 + sigma_next ** 2)
        beta_t = 1 - abar_t / abar_prev
        x_t = x * abar_t ** 0.5
        # Eq. 7: posterior mean mu~_t(x_t, x0) and variance beta~_t.
        mean = (abar_prev ** 0.5 * beta_t / (1 - abar_t)) * denoised \
            + ((1 - beta_t) ** 0.5 * (1 - abar_prev) / (1 - abar_t)) * x_t
        x_prev = mean
        if sigma_next > 0:
            variance = (1 - abar_prev) / (1 - abar_t) * beta_t
            x_prev = mean + variance.clamp(min=1e-20) ** 0.5 * randn_like_per_sample(x, generators)
        x = x_prev / abar_prev ** 0.5
        _check_finite(x, i, sigma)
    return x


#: sampler name -> function, for configs and the CLI
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "ddpm": sample_ddpm,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """Look a sampler up by name, with a message listing the valid names."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}", field="sampler",
                          fix=f"choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
