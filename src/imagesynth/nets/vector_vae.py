"""A VAE with one latent vector per image (Kingma & Welling 2014), shaped like diffusers' VAE.

A stride-2 conv encoder and an MLP head predict a diagonal Gaussian q(z|x) over a `latent_dim`
vector; an MLP and nearest-upsample convs decode it. Unlike the grid autoencoder, whose 8x8
latent can paint almost any image, every z here decodes to a whole scene, so z ~ N(0, I) gives
plausible images: the kind of generator latent Big Sleep optimises with CLIP. The latent travels
as a [B, latent_dim, 1, 1] grid so code written for grid autoencoders works unchanged;
`encode(x).latent_dist` and `decode(z).sample` follow diffusers' `AutoencoderKL`; `prior`
samples starting latents from a mixture fitted to the training encodings.
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from torch import nn

from ..errors import InputImageError


class MixturePrior(nn.Module):
    """A full-covariance Gaussian mixture over scaled latents, fitted to the training encodings.

    N(0, I) is the prior the KL term pulls toward, but the encodings never fill it evenly: on
    ShapesWorld most N(0, I) draws decode to three or more smudges and warm colours dominate.
    Sampling from a mixture fitted to the encodings after training (ex-post density estimation,
    Ghosh et al. 2020) gives scenes like the data's. Until fitted it is one standard Gaussian.
    """

    def __init__(self, dim: int, components: int):
        super().__init__()
        self.register_buffer("weights", torch.full((components,), 1.0 / components))
        self.register_buffer("means", torch.zeros(components, dim))
        self.register_buffer("scale_tril", torch.eye(dim).expand(components, dim, dim).clone())

    def set(self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> None:
        """Store a fitted mixture: weights [K], means [K, D], covariances [K, D, D]."""
        self.weights.copy_(weights / weights.sum())
        self.means.copy_(means)
        self.scale_tril.copy_(torch.linalg.cholesky(covariances.double()).to(self.scale_tril))

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` latents [count, D, 1, 1] drawn with `generator` only."""
        component = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        noise = torch.randn(count, self.means.shape[1], generator=generator)
        z = self.means[component] + (self.scale_tril[component] @ noise[:, :, None])[:, :, 0]
        return z[:, :, None, None]


class VectorVAE(nn.Module):
    """Images [B, C, S, S] in [-1, 1] <-> latents [B, latent_dim, 1, 1] (unscaled)."""

    def __init__(self, image_size: int, image_channels: int, latent_dim: int,
                 widths: tuple[int, ...], hidden_width: int, prior_components: int):
        super().__init__()
        self.prior = MixturePrior(latent_dim, prior_components)
        self.image_size = image_size
        self.bottom_size = image_size // 2 ** len(widths)  # side of the last feature map
        self.bottom_width = widths[-1]
        flat = widths[-1] * self.bottom_size ** 2
        encoder: list[nn.Module] = [nn.Conv2d(image_channels, widths[0], 3, padding=1), nn.SiLU()]
        previous = widths[0]
        for width in widths:  # each stage halves the side
            encoder += [nn.Conv2d(previous, width, 4, stride=2, padding=1), nn.SiLU()]
            previous = width
        encoder += [nn.Flatten(), nn.Linear(flat, hidden_width), nn.SiLU(),
                    nn.Linear(hidden_width, 2 * latent_dim)]
        self.encoder = nn.Sequential(*encoder)
        self.decoder_head = nn.Sequential(nn.Linear(latent_dim, hidden_width), nn.SiLU(),
                                          nn.Linear(hidden_width, flat), nn.SiLU())
        decoder: list[nn.Module] = []
        outputs = list(reversed(widths[:-1])) + [widths[0]]
        for width in outputs:  # nearest upsampling + conv: no transposed-conv checkerboards
            decoder += [nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.Conv2d(previous, width, 3, padding=1), nn.SiLU()]
            previous = width
        decoder.append(nn.Conv2d(previous, image_channels, 3, padding=1))
        self.decoder = nn.Sequential(*decoder)

    def encode(self, images: torch.Tensor) -> AutoencoderKLOutput:
        """q(z|x): `.latent_dist` is a diagonal Gaussian over [B, latent_dim, 1, 1]."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise InputImageError(f"this autoencoder takes {self.image_size}x{self.image_size} "
                                  f"images, got {images.shape[-1]}x{images.shape[-2]}",
                                  field="images", fix=f"resize to {self.image_size} px")
        moments = self.encoder(images)[:, :, None, None]  # [B, 2 * latent_dim, 1, 1]
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(moments))

    def decode(self, latents: torch.Tensor) -> DecoderOutput:
        """Images [B, C, S, S] (unclamped) from latents [B, latent_dim, 1, 1]."""
        if latents.shape[-2:] != (1, 1):
            raise InputImageError(f"this autoencoder has one latent vector per image and makes "
                                  f"only {self.image_size}x{self.image_size} images; got a "
                                  f"{latents.shape[-1]}x{latents.shape[-2]} latent grid",
                                  field="latents", fix=f"use a size of {self.image_size}")
        features = self.decoder_head(latents.flatten(1))
        features = features.view(-1, self.bottom_width, self.bottom_size, self.bottom_size)
        return DecoderOutput(sample=self.decoder(features))
