"""Noise schedules: pure functions returning `n + 1` decreasing sigmas that end in 0."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def _check_steps(num_steps: int, field: str = "num_steps") -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ConfigError(f"must be an integer >= 1, got {num_steps!r}", field=field,
                          fix="ask for at least one sampling step")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (math.isfinite(sigma_min) and sigma_min > 0):
        raise ConfigError(f"must be a finite number > 0, got {sigma_min!r}", field="sigma_min",
                          fix="use a small positive noise level such as 0.002")
    if not (math.isfinite(sigma_max) and sigma_max > sigma_min):
        raise ConfigError(f"must be finite and greater than sigma_min={sigma_min}, got {sigma_max!r}",
                          field="sigma_max", fix="use a noise level above sigma_min, e.g. 80")


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Karras et al. (2022) schedule, Eq. 5: evenly spaced in sigma^(1/rho); shape [num_steps + 1]."""
    _check_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    if not rho > 0:
        raise ConfigError(f"must be > 0, got {rho!r}", field="rho", fix="use rho=7 (the EDM default)")
    ramp = torch.linspace(0, 1, num_steps, dtype=dtype)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_sigmas(num_steps: int, sigma_min: float, sigma_max: float,
                       *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Schedule evenly spaced in log sigma (the rho -> infinity limit of Karras); shape [num_steps + 1]."""
    _check_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), num_steps, dtype=dtype)
    return _append_zero(log_sigmas.exp())


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Per-timestep noise levels of a discrete DDPM model: sigma_t = sqrt((1 - abar_t) / abar_t)."""
    alphas_cumprod = torch.as_tensor(alphas_cumprod)
    if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
        raise ConfigError("must be a 1-D tensor with at least 2 entries", field="alphas_cumprod")
    if not ((alphas_cumprod > 0) & (alphas_cumprod < 1)).all():
        raise ConfigError("entries must lie strictly between 0 and 1", field="alphas_cumprod",
                          fix="pass the scheduler's alphas_cumprod, e.g. scheduler.alphas_cumprod")
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def scaled_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's training schedule: betas linear in sqrt(beta), abar_t = prod(1 - beta)."""
    _check_steps(num_train_timesteps, "num_train_timesteps")
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps,
                           dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


def discrete_sigmas(num_steps: int, alphas_cumprod: torch.Tensor,
                    *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The discrete model's own schedule: timesteps evenly spaced from T-1 to 0, log-sigma interpolated.

    This equals k-diffusion's `DiscreteSchedule.get_sigmas(n)`; shape [num_steps + 1].
    """
    _check_steps(num_steps)
    log_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod).to(torch.float64).log()
    t = torch.linspace(len(log_sigmas) - 1, 0, num_steps, dtype=torch.float64)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    sigmas = ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()
    return _append_zero(sigmas.to(dtype))


def validate_sigmas(sigmas: torch.Tensor, field: str = "sigmas") -> torch.Tensor:
    """Check a schedule is 1-D, finite, non-negative and strictly decreasing; return it unchanged."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ConfigError("must be a 1-D tensor of at least 2 noise levels (one step)", field=field,
                          fix="build it with karras_sigmas(num_steps, sigma_min, sigma_max)")
    if not torch.isfinite(sigmas).all() or (sigmas < 0).any():
        raise ConfigError("must be finite and >= 0", field=field)
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ConfigError("must be strictly decreasing (e.g. 14.6, ..., 0.03, 0)", field=field,
                          fix="sort the noise levels from high to low, without repeats")
    return sigmas
