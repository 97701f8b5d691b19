"""A small VQ tokenizer: conv encoder -> vector quantiser -> conv decoder (VQ-VAE / VQGAN-lite).

VQ-VAE (van den Oord et al. 2017): the encoder maps x to a grid z_e(x) [B, D, h, w]; each
vector is replaced by its nearest codebook entry e_k (eq. 1), so the image becomes a grid of
integers k, "image words" for an autoregressive prior (DALL-E, Ramesh et al. 2021). Gradients
skip the argmin by the straight-through estimator z_q = z_e + sg(e_k - z_e). The codebook is
learned not by its loss term ||sg(z_e) - e||^2 but by exponential moving averages of the
vectors assigned to each code (app. A.1, eqs. 6-8), with Laplace-smoothed counts; codes that no
vector picked for `dead_after` training steps are restarted from random encoder outputs of the
current batch (Dhariwal et al. 2020, Jukebox sec. 3.1), drawn with the caller's generator so
a resumed run restarts the same codes with the same vectors. The encoder/decoder follow VQGAN's
ResNet layout (Esser et al. 2021) without attention or the adversarial term. Networks only: the
family (`imagesynth.families.ar`) weighs the losses and runs the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 when they divide the width, else 1 (batch norm would tie samples)."""
    return 8 if channels % 8 == 0 else 1


class ResBlock(nn.Module):
    """Pre-activation residual block: GN -> SiLU -> conv, twice, plus a (1x1) skip."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels_in), channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(channels_out), channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = (nn.Identity() if channels_in == channels_out
                     else nn.Conv2d(channels_in, channels_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, H, W] -> [B, C_out, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """x [B, 3, H, W] -> z_e [B, D, H/f, W/f], f = 2^(len(channels) - 1)."""

    def __init__(self, image_channels: int, channels: tuple[int, ...], code_dim: int):
        super().__init__()
        self.conv_in = nn.Conv2d(image_channels, channels[0], 3, padding=1)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            # a strided conv halves the side: learned downsampling, as in VQGAN
            layers += [ResBlock(c_in, c_in), nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)]
        layers += [ResBlock(channels[-1], channels[-1]), ResBlock(channels[-1], channels[-1])]
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(_groups(channels[-1]), channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> continuous codes z_e."""
        return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(x)))))


class Decoder(nn.Module):
    """z_q [B, D, h, w] -> images [B, 3, h*f, w*f] (unclamped), the encoder mirrored."""

    def __init__(self, image_channels: int, channels: tuple[int, ...], code_dim: int):
        super().__init__()
        top = channels[-1]
        self.conv_in = nn.Conv2d(code_dim, top, 3, padding=1)
        layers: list[nn.Module] = [ResBlock(top, top), ResBlock(top, top)]
        for c_in, c_out in zip(channels[:0:-1], channels[-2::-1]):
            # nearest upsampling + conv instead of a transposed conv: no checkerboard artefacts
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(c_in, c_out, 3, padding=1), ResBlock(c_out, c_out)]
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(_groups(channels[0]), channels[0])
        self.conv_out = nn.Conv2d(channels[0], image_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Quantised codes -> images."""
        return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(z)))))


@dataclass
class Quantized:
    """What the quantiser returns for a grid of encoder outputs."""

    z_q: torch.Tensor  # [B, D, h, w] straight-through: forward = e_k, backward = identity on z_e
    codes: torch.Tensor  # [B, h, w] long, indices k
    commitment: torch.Tensor  # scalar ||z_e - sg(e_k)||^2 (mean), the encoder's pull to its code
    perplexity: torch.Tensor  # scalar exp(H) of this batch's code histogram
    restarted: int  # dead codes restarted by this (training) call


class VectorQuantizer(nn.Module):
    """Nearest-code lookup with an EMA codebook and dead-code restarts (module docstring)."""

    def __init__(self, num_codes: int, code_dim: int, decay: float = 0.99,
                 dead_after: int = 50, epsilon: float = 1e-5):
        super().__init__()
        if num_codes < 2 or code_dim < 1:
            raise ConfigError("needs at least 2 codes of at least 1 dimension", field="num_codes")
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"must be in [0, 1), got {decay}", field="codebook_decay")
        if dead_after < 1:
            raise ConfigError(f"must be at least 1, got {dead_after}", field="dead_after")
        self.num_codes, self.code_dim = num_codes, code_dim
        self.decay, self.dead_after, self.epsilon = decay, dead_after, epsilon
        # Buffers, not parameters: the optimiser never touches them, and they travel with the
        # weights and checkpoints (a resumed run continues the same averages and counters).
        self.register_buffer("codebook", torch.randn(num_codes, code_dim))  # e_k
        self.register_buffer("cluster_size", torch.zeros(num_codes))  # N_k (eq. 6)
        self.register_buffer("code_sum", torch.zeros(num_codes, code_dim))  # m_k (eq. 7)
        # Every code starts "dead", so the first training batch initialises the whole codebook
        # from encoder outputs (a data-dependent init through the restart path).
        self.register_buffer("unused_steps", torch.full((num_codes,), dead_after,
                                                        dtype=torch.long))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] -> code vectors e_k [B, D, h, w]."""
        return self.codebook[codes].permute(0, 3, 1, 2)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Vectors [N, D] -> index of the nearest code (squared Euclidean; ties -> lowest k)."""
        distance = (flat.square().sum(1, keepdim=True) - 2 * flat @ self.codebook.t()
                    + self.codebook.square().sum(1)[None])  # [N, K]
        return distance.argmin(1)

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor, generator: torch.Generator) -> int:
        dead = (self.unused_steps >= self.dead_after).nonzero().flatten()
        if not len(dead):
            return 0
        count = len(flat)
        # Without replacement when the batch has enough vectors, so restarts do not collide.
        rows = (torch.randperm(count, generator=generator, device=generator.device)[:len(dead)]
                if count >= len(dead) else
                torch.randint(count, (len(dead),), generator=generator, device=generator.device))
        fresh = flat[rows.to(flat.device)]
        self.codebook[dead] = fresh
        self.code_sum[dead] = fresh  # m_k / N_k = the new vector: the averages restart with it
        self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0
        return len(dead)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        one_hot = F.one_hot(codes, self.num_codes).to(flat.dtype)  # [N, K]
        counts = one_hot.sum(0)  # n_k
        sums = one_hot.t() @ flat  # sum of the z_e assigned to k, [K, D]
        gamma = self.decay
        self.cluster_size.mul_(gamma).add_(counts, alpha=1 - gamma)  # eq. 6
        self.code_sum.mul_(gamma).add_(sums, alpha=1 - gamma)  # eq. 7
        # Laplace smoothing keeps a rarely used code's N_k away from 0 (no division blow-up)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.num_codes * self.epsilon)
        self.codebook.copy_(self.code_sum / (smoothed * total)[:, None])  # eq. 8
        used = counts > 0
        self.unused_steps[used] = 0
        self.unused_steps[~used] += 1

    def forward(self, z_e: torch.Tensor, generator: torch.Generator | None = None) -> Quantized:
        """Quantise z_e [B, D, h, w]; in training mode also restart dead codes, then EMA-update.

        Training needs `generator` (the loop's step generator): restarts draw from it alone.
        """
        if self.training and generator is None:
            raise ConfigError("a training forward restarts dead codes and needs a generator",
                              field="generator", fix="pass the step generator of the loop")
        b, d, h, w = z_e.shape
        if d != self.code_dim:
            raise ConfigError(f"expected {self.code_dim}-dim vectors, got {d}", field="z_e")
        with torch.autocast(z_e.device.type, enabled=False):  # distances and averages in fp32
            z_e = z_e.float()
            flat = z_e.permute(0, 2, 3, 1).reshape(-1, d).detach()  # [N, D]
            restarted = self._restart_dead(flat, generator) if self.training else 0
            codes = self.nearest(flat)
            e = self.lookup(codes.view(b, h, w))  # the codes as chosen, before this update
            if self.training:
                self._ema_update(flat, codes)
            codes = codes.view(b, h, w)
            commitment = F.mse_loss(z_e, e)  # e holds no grad: this is ||z_e - sg(e)||^2
            z_q = z_e + (e - z_e).detach()  # straight-through estimator
            histogram = torch.bincount(codes.flatten(), minlength=self.num_codes).float()
            p = histogram / histogram.sum()
            perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
        return Quantized(z_q, codes, commitment, perplexity, restarted)


class VQTokenizer(nn.Module):
    """Images <-> grids of code indices: encoder, `VectorQuantizer`, decoder."""

    def __init__(self, image_channels: int = 3, channels: tuple[int, ...] = (32, 64, 128),
                 num_codes: int = 256, code_dim: int = 32, codebook_decay: float = 0.99,
                 dead_after: int = 50):
        super().__init__()
        if len(channels) < 1 or min(channels) < 1:
            raise ConfigError("needs at least one positive width", field="channels")
        self.downsample_factor = 2 ** (len(channels) - 1)
        self.encoder = Encoder(image_channels, tuple(channels), code_dim)
        self.quantizer = VectorQuantizer(num_codes, code_dim, codebook_decay, dead_after)
        self.decoder = Decoder(image_channels, tuple(channels), code_dim)

    @property
    def num_codes(self) -> int:
        """K, the vocabulary size of the image words."""
        return self.quantizer.num_codes

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """x [B, 3, H, W] in [-1, 1] -> (x_hat [B, 3, H, W], `Quantized`)."""
        quantized = self.quantizer(self.encoder(x), generator)
        return self.decoder(quantized.z_q), quantized

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> codes [B, h, w] long (nearest codes; never updates the codebook)."""
        return self.quantizer.nearest(
            self.encoder(x).float().permute(0, 2, 3, 1).reshape(-1, self.quantizer.code_dim)
        ).view(len(x), x.shape[2] // self.downsample_factor, x.shape[3] // self.downsample_factor)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] -> images [B, 3, h*f, w*f] (unclamped)."""
        return self.decoder(self.quantizer.lookup(codes))
