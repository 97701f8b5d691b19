"""Small KL-regularised autoencoders: SD's VAE design for latent diffusion, and a vector VAE.

The network is diffusers' `AutoencoderKL`: a ResNet encoder predicts a diagonal Gaussian
posterior q(z|x) = N(mu, sigma^2) over a `latent_channels`-channel grid `downsample_factor`
times smaller than the image, and a mirrored decoder maps z back to pixels. Latent diffusion
works on `z * scaling_factor`, where `scaling_factor = 1 / std(z)` over the training set
(Rombach et al. 2022, sec. 4.3.2), so the denoiser sees roughly unit-variance latents.
The `vector` architecture (`imagesynth.nets.vector_vae`) has one latent vector per image
instead of a grid: a generator for CLIP-guided synthesis rather than a space for diffusion.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from ..config import from_dict, to_dict
from ..errors import ConfigError, InputImageError, ModelNotFoundError
from ..registry import Registry
from .vector_vae import VectorVAE

FAMILY = "autoencoder"


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of an autoencoder; stored in config.json and the weights' metadata."""

    image_size: int = 64
    image_channels: int = 3
    #: latent grid channels ("kl-grid"), or the latent vector's length ("vector")
    latent_channels: int = 4
    #: "kl-grid": diffusers' AutoencoderKL; "vector": one latent vector per image (VectorVAE)
    architecture: Literal["kl-grid", "vector"] = "kl-grid"
    #: one encoder stage per entry; "kl-grid": every stage after the first halves the
    #: resolution; "vector": every stage does
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    #: "vector" only: width of the MLP between the last feature map and the latent
    hidden_width: int = 256
    #: "vector" only: Gaussians in the mixture fitted to the training latents for sampling
    prior_components: int = 16
    layers_per_block: int = 1
    norm_num_groups: int = 32
    #: self-attention in the bottleneck (SD has it; costly at high latent resolution)
    mid_block_attention: bool = True
    #: 1 / std of the training set's posterior means; 1.0 until measured after training
    scaling_factor: float = 1.0

    def __post_init__(self):
        if self.architecture not in ("kl-grid", "vector"):
            raise ConfigError(f"unknown architecture {self.architecture!r}", field="architecture",
                              fix="choose kl-grid or vector")
        if not self.block_out_channels:
            raise ConfigError("needs at least one stage", field="block_out_channels")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"every width must be divisible by norm_num_groups "
                              f"({self.norm_num_groups})", field="block_out_channels")
        if self.image_size < 1 or self.image_size % self.downsample_factor:
            raise ConfigError(f"must be a positive multiple of the downsample factor "
                              f"{self.downsample_factor}", field="image_size")
        if self.latent_channels < 1 or self.image_channels < 1:
            raise ConfigError("must be at least 1", field="latent_channels")
        if not self.scaling_factor > 0:
            raise ConfigError("must be positive", field="scaling_factor")
        if self.prior_components < 1:
            raise ConfigError("must be at least 1", field="prior_components")
        if self.architecture == "vector" and self.image_size % 2 ** len(self.block_out_channels):
            raise ConfigError(f"must be a multiple of 2^{len(self.block_out_channels)} (one "
                              "halving per stage)", field="image_size")

    @property
    def downsample_factor(self) -> int:
        """Image side / latent side (a vector latent is a 1x1 grid: the whole image side)."""
        if self.architecture == "vector":
            return self.image_size
        return 2 ** (len(self.block_out_channels) - 1)


#: named architectures: "<data>-f<downsample factor>". Widths are small because the decoder
#: runs inside every generation on CPU: (16, 32, 64) decodes ~4x faster than SD's pattern
#: scaled to (32, 64, 128), and the 4-channel latent, not the width, bounds the quality.
PRESETS: dict[str, AutoencoderConfig] = {
    "tiny": AutoencoderConfig(image_size=16, block_out_channels=(8, 16, 16), norm_num_groups=4,
                              mid_block_attention=False),
    "shapes-f4": AutoencoderConfig(image_size=32, block_out_channels=(16, 32, 64),
                                   norm_num_groups=8, mid_block_attention=False),
    "emoji-f4": AutoencoderConfig(image_size=64, block_out_channels=(16, 32, 64),
                                  norm_num_groups=8, mid_block_attention=False),
    # vector VAEs: "<data>-v<latent length>"
    "tiny-v8": AutoencoderConfig(image_size=16, architecture="vector", latent_channels=8,
                                 block_out_channels=(8, 16), norm_num_groups=4, hidden_width=32,
                                 prior_components=4, mid_block_attention=False),
    "shapes-v32": AutoencoderConfig(image_size=32, architecture="vector", latent_channels=32,
                                    block_out_channels=(32, 64, 128), norm_num_groups=8,
                                    mid_block_attention=False),
}


def autoencoder_config(preset: str, **overrides) -> AutoencoderConfig:
    """The named preset's config, with fields replaced by `overrides`."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown autoencoder preset {preset!r}", field="preset",
                          fix=f"choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


class Autoencoder(nn.Module):
    """Images in [-1, 1] <-> scaled latents; `encode` is deterministic (the posterior mean)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        stages = len(config.block_out_channels)
        if config.architecture == "vector":
            self.vae = VectorVAE(config.image_size, config.image_channels, config.latent_channels,
                                 tuple(config.block_out_channels), config.hidden_width,
                                 config.prior_components)
        else:
            self.vae = AutoencoderKL(
                in_channels=config.image_channels, out_channels=config.image_channels,
                down_block_types=("DownEncoderBlock2D",) * stages,
                up_block_types=("UpDecoderBlock2D",) * stages,
                block_out_channels=tuple(config.block_out_channels),
                layers_per_block=config.layers_per_block, latent_channels=config.latent_channels,
                norm_num_groups=config.norm_num_groups, sample_size=config.image_size,
                scaling_factor=config.scaling_factor,
                mid_block_add_attention=config.mid_block_attention)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent grid."""
        return self.config.latent_channels

    @property
    def downsample_factor(self) -> int:
        """Image side / latent side."""
        return self.config.downsample_factor

    @property
    def scaling_factor(self) -> float:
        """Multiplier that gives the training set's latents unit standard deviation."""
        return self.config.scaling_factor

    @property
    def image_size(self) -> int:
        """The side length the autoencoder was trained at."""
        return self.config.image_size

    @property
    def fixed_image_size(self) -> int | None:
        """The only side a vector VAE can make; None when any multiple of the factor works."""
        return self.config.image_size if self.config.architecture == "vector" else None

    @property
    def latent_size(self) -> int:
        """The latent side length at the training image size."""
        return self.config.image_size // self.config.downsample_factor

    @property
    def latent_prior(self):
        """The vector VAE's sampling prior over scaled latents (`.sample(n, generator)`), or None."""
        return self.vae.prior if self.config.architecture == "vector" else None

    def with_scaling_factor(self, scaling_factor: float) -> "Autoencoder":
        """Record a measured scaling factor (in place); returns self."""
        self.config = dataclasses.replace(self.config, scaling_factor=float(scaling_factor))
        if isinstance(self.vae, AutoencoderKL):
            self.vae.register_to_config(scaling_factor=float(scaling_factor))
        return self

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.config.image_channels:
            raise InputImageError(f"expected images of shape [B, {self.config.image_channels}, "
                                  f"H, W], got {tuple(images.shape)}", field="images",
                                  fix="pass RGB images as a [B, 3, H, W] tensor in [-1, 1]")
        f = self.downsample_factor
        if images.shape[-1] % f or images.shape[-2] % f:
            raise InputImageError(f"image size {images.shape[-2]}x{images.shape[-1]} is not a "
                                  f"multiple of the downsample factor {f}", field="images",
                                  fix=f"resize to {self.image_size}x{self.image_size}")

    def posterior(self, images: torch.Tensor) -> DiagonalGaussianDistribution:
        """q(z|x) for images in [-1, 1], in unscaled latent units."""
        self._check_images(images)
        return self.vae.encode(images).latent_dist

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled posterior means [B, latent_channels, H/f, W/f] (deterministic)."""
        return self.posterior(images).mean * self.scaling_factor

    def encode_sample(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A scaled posterior sample z = (mu + sigma * eps) * scaling_factor."""
        return self.posterior(images).sample(generator) * self.scaling_factor

    def decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Images [B, C, H*f, W*f] in [-1, 1] from scaled latents (unclamped if `clamp=False`)."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise InputImageError(f"expected latents of shape [B, {self.latent_channels}, h, w], "
                                  f"got {tuple(latents.shape)}", field="latents",
                                  fix="pass latents produced by this autoencoder's encode()")
        images = self.vae.decode(latents / self.scaling_factor).sample
        return images.clamp(-1, 1) if clamp else images

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """decode(encode(images)), clamped to [-1, 1]."""
        return self.decode(self.encode(images))


def model_config(config: AutoencoderConfig, **extra) -> dict:
    """The config.json of an autoencoder model folder."""
    return {"family": FAMILY, "autoencoder": to_dict(config), **extra}


def load_autoencoder(spec: str, device: str | torch.device = "cpu") -> Autoencoder:
    """Load an autoencoder by registry name or model-folder path (hash-verified), in eval mode."""
    registry = Registry()
    entry = registry.get(str(spec))
    config = entry.config()
    if config.get("family") != FAMILY:
        raise ModelNotFoundError(f"{spec!r} is a {config.get('family', 'unknown')!r} model, "
                                 "not an autoencoder", field="model",
                                 fix="pass an autoencoder model folder (family 'autoencoder')")
    model = Autoencoder(from_dict(AutoencoderConfig, config["autoencoder"]))
    model.load_state_dict(registry.load_state_dict(entry))
    return model.to(device).eval().requires_grad_(False)
