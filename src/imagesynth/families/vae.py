"""The VAE family: a trained vector VAE as a generator, sampling its prior and decoding.

Two priors: the Gaussian mixture fitted to the training encodings after training (ex-post
density estimation, Ghosh et al. 2020; what `imagesynth train autoencoder` stores), and the
N(0, I) the KL term pulls toward. The network and its training live in `nets/autoencoder*`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError, ModelNotFoundError

FAMILY = "vae"
PRIORS = ("mixture", "normal")


class VAEModel:
    """A vector VAE behind the family interface: prior samples, encode, decode."""

    family = FAMILY
    has_latent = True

    def __init__(self, autoencoder):
        if autoencoder.latent_prior is None:
            raise ModelNotFoundError("this autoencoder has a latent grid, not a vector latent "
                                     "with a prior", field="model",
                                     fix="use a vector VAE (e.g. shapes-v32) as a generator")
        self.autoencoder = autoencoder
        self.image_size = autoencoder.image_size
        self.latent_dim = autoencoder.latent_channels

    def latent(self, n: int, generators: Sequence[torch.Generator], prior: str = "mixture",
               temperature: float = 1.0) -> torch.Tensor:
        """Scaled latents [n, D, 1, 1], latent i drawn with generators[i] alone."""
        check_prior(prior)
        check_temperature(temperature)
        if len(generators) != n:
            raise ConfigError(f"{len(generators)} generators for {n} samples", field="generators")
        if prior == "mixture":
            rows = [self.autoencoder.latent_prior.sample(1, g) for g in generators]
            z = torch.cat(rows) if rows else torch.empty(0, self.latent_dim, 1, 1)
            if temperature != 1.0:  # shrink each draw toward its mixture's weighted mean
                centre = (self.autoencoder.latent_prior.weights[:, None]
                          * self.autoencoder.latent_prior.means).sum(0)[None, :, None, None]
                z = centre + temperature * (z - centre)
            return z
        return torch.stack([torch.randn(self.latent_dim, 1, 1, generator=g) for g in generators]
                           ) * temperature

    @torch.no_grad()
    def sample(self, n: int, generators: Sequence[torch.Generator], condition=None,
               prior: str = "mixture", temperature: float = 1.0) -> torch.Tensor:
        """`n` images [n, 3, S, S] in [-1, 1] decoded from prior draws (unconditional)."""
        if condition is not None:
            raise ConfigError("the VAE generator is unconditional", field="prompt",
                              fix="leave out the prompt for a VAE model")
        return self.decode(self.latent(n, generators, prior, temperature))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] in [-1, 1] -> scaled posterior means [B, D, 1, 1]."""
        return self.autoencoder.encode(images)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, D, 1, 1] (or [B, D]) -> images in [-1, 1]."""
        if latent.ndim == 2:
            latent = latent[:, :, None, None]
        return self.autoencoder.decode(latent)


def check_prior(prior: str) -> None:
    """The prior must be one of PRIORS."""
    if prior not in PRIORS:
        raise ConfigError(f"unknown prior {prior!r}", field="prior",
                          fix=f"choose one of {', '.join(PRIORS)}")


def check_temperature(temperature: float) -> None:
    """Sampling temperature must be > 0 (and finite)."""
    if not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise ConfigError(f"must be > 0, got {temperature!r}", field="temperature",
                          fix="1 samples the model as trained; below 1 trades variety for "
                              "typical samples")


def load_vae(spec: str, device: str | torch.device = "cpu") -> VAEModel:
    """A vector VAE model folder or name as a generator."""
    from ..nets.autoencoder import load_autoencoder

    return VAEModel(load_autoencoder(spec, device=device))
