"""A Gaussian mixture whose ideal denoiser is closed-form: ground truth for samplers and benchmarks."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .denoisers import append_dims


class GaussianMixture:
    """Isotropic Gaussian mixture sum_k w_k N(mu_k, s_k^2 I) in D dimensions."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor):
        means, stds, weights = (torch.as_tensor(t, dtype=torch.float64) for t in (means, stds, weights))
        if means.ndim != 2 or stds.shape != means.shape[:1] or weights.shape != means.shape[:1]:
            raise ConfigError("need means [K, D], stds [K] and weights [K]", field="means")
        if (stds <= 0).any() or (weights <= 0).any():
            raise ConfigError("stds and weights must be > 0", field="stds")
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()

    @classmethod
    def ring(cls, num_components: int = 8, radius: float = 1.0, std: float = 0.05) -> GaussianMixture:
        """Equal-weight components evenly spaced on a circle in 2-D (a standard sampler stress test)."""
        angles = torch.arange(num_components, dtype=torch.float64) * (2 * torch.pi / num_components)
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
        return cls(means, torch.full((num_components,), std), torch.ones(num_components))

    def sample(self, num_samples: int, generator: torch.Generator) -> torch.Tensor:
        """Exact samples [num_samples, D] in float64."""
        components = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        noise = torch.randn(num_samples, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[components] + self.stds[components, None] * noise

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Ideal denoiser E[x0 | x0 + sigma n = x] for x [B, D] and sigma [B]."""
        means, stds, weights = (t.to(x) for t in (self.means, self.stds, self.weights))
        s = append_dims(sigma, 2)[:, :, None]                     # [B, 1, 1]
        variance = stds[None, :, None] ** 2 + s ** 2              # [B, K, 1]: total variance per component
        diff = x[:, None, :] - means[None]                        # [B, K, D]
        dim = x.shape[1]
        log_likelihood = (-(diff ** 2).sum(-1, keepdim=True) / (2 * variance)
                          - dim / 2 * variance.log()).squeeze(-1)  # [B, K]
        responsibility = torch.softmax(log_likelihood + weights.log(), dim=1)[:, :, None]
        # Per component: E[x0 | x, k] = mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k).
        posterior_means = means[None] + stds[None, :, None] ** 2 / variance * diff
        return (responsibility * posterior_means).sum(1)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        """The mixture as a denoiser following the engine's contract."""
        return self.denoise(x, sigma)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, num_projections: int = 256,
                       seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between equal-size point sets [N, D], with seeded projections."""
    if a.shape != b.shape:
        raise ConfigError(f"sample sets differ in shape {tuple(a.shape)} vs {tuple(b.shape)}", field="samples")
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], num_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    projected_a = (a.to(torch.float64) @ directions).sort(dim=0).values
    projected_b = (b.to(torch.float64) @ directions).sort(dim=0).values
    return float((projected_a - projected_b).abs().mean())
