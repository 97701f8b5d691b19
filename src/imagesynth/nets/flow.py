"""Glow (Kingma & Dhariwal 2018): a multi-scale normalizing flow, exact in both directions.

Each level squeezes 2x2 pixels into channels (RealNVP, Dinh et al. 2017, sec. 3.6), runs K
steps of flow (ActNorm -> invertible 1x1 conv -> affine coupling, Glow table 1), then factors
half of the channels out under a Gaussian whose mean and log-std a zero-initialised conv
predicts from the kept half (Glow's `split2d` prior). The last level's Gaussian is learned per
position, its moments shifted by an optional condition vector, which also enters every coupling
net. Each prior is folded into the flow as a standardisation eps = (z - mu) / sigma, so the
whole network is one bijection x <-> eps with base N(0, I):
    log p(x | c) = log N(eps; 0, I) + log |det d eps / dx|,
and `forward` returns (eps [B, D], log|det| [B]); `inverse` maps eps back to x exactly.
Every layer offers `forward(x, c) -> (y, logdet [B])` and `inverse(y, c) -> x`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2]: each 2x2 patch becomes channels (RealNVP sec. 3.6)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `squeeze`: [B, 4C, H, W] -> [B, C, 2H, 2W]."""
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)


def _per_sample(logdet: torch.Tensor, batch: int) -> torch.Tensor:
    """A log-det shared by the batch (0-d or [1]) or one per sample, as [B]."""
    return logdet.expand(batch)


class ActNorm(nn.Module):
    """y = (x + b) * exp(logs) per channel; b, logs set from the first training batch."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        # A buffer, so it travels with the weights: a loaded model never re-initialises.
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent init (Glow sec. 3.1): zero mean, unit variance per channel on `x`."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True)
        self.bias.copy_(-mean)
        self.logs.copy_(-torch.log(std + 1e-6))  # + eps: a constant channel must not give inf
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None):
        """(y, log|det|) with log|det| = h * w * sum(logs) (Glow table 1)."""
        # Only a training forward initialises: eval-mode encodes never depend on the batch.
        if self.training and not bool(self.initialized):
            self.initialize(x)
        h, w = x.shape[-2:]
        y = (x + self.bias) * torch.exp(self.logs)
        return y, _per_sample(h * w * self.logs.sum(), len(x))

    def inverse(self, y: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """x = y * exp(-logs) - b."""
        return y * torch.exp(-self.logs) - self.bias


class InvConv1x1(nn.Module):
    """Invertible 1x1 conv, W = P L (U + diag(sign(s) * exp(log|s|))) (Glow eq. 10)."""

    def __init__(self, channels: int):
        super().__init__()
        # A random rotation (log|det| = 0 at init), LU-factored once; P and sign(s) stay fixed.
        q = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))[0]
        p, lower, upper = torch.linalg.lu(q)
        s = upper.diagonal()
        self.register_buffer("p", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("l_mask", torch.tril(torch.ones(channels, channels), -1),
                             persistent=False)
        self.register_buffer("eye", torch.eye(channels), persistent=False)
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(s.abs().log().float())

    def weight(self) -> torch.Tensor:
        """W [C, C] from its LU factors."""
        lower = self.lower * self.l_mask + self.eye
        upper = self.upper * self.l_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None):
        """(W x per pixel, h * w * sum(log|s|)): log|det W| read off U's diagonal (Glow eq. 10)."""
        h, w = x.shape[-2:]
        y = F.conv2d(x, self.weight()[:, :, None, None])
        return y, _per_sample(h * w * self.log_s.sum(), len(x))

    def inverse(self, y: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """W^-1 y per pixel, W^-1 computed in float64 so round trips stay exact in float32."""
        weight = self.weight()
        inverse = torch.linalg.inv(weight.double()).to(weight.dtype)
        return F.conv2d(y, inverse[:, :, None, None])


class ZeroConv2d(nn.Module):
    """3x3 conv whose output starts at zero, scaled by exp(3 * logs) (Glow's `Conv2dZeros`)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, H, W] -> [B, out, H, W]."""
        return self.conv(x) * torch.exp(3 * self.logs)


class AffineCoupling(nn.Module):
    """y_b = (x_b + t(x_a, c)) * s(x_a, c), y_a = x_a (RealNVP eq. 7, Glow table 1)."""

    def __init__(self, channels: int, hidden_channels: int, condition_dim: int = 0,
                 min_scale: float = 0.0):
        super().__init__()
        if not 0.0 <= min_scale < 1.0:
            raise ConfigError(f"must be in [0, 1), got {min_scale}", field="min_scale")
        self.min_scale = float(min_scale)
        self.conv_in = nn.Conv2d(channels // 2, hidden_channels, 3, padding=1)
        self.conv_mid = nn.Conv2d(hidden_channels, hidden_channels, 1)
        # zero-initialised last layer: every coupling starts as y_b = x_b * sigmoid(2)
        self.conv_out = ZeroConv2d(hidden_channels, 2 * (channels - channels // 2))
        self.condition = nn.Linear(condition_dim, hidden_channels) if condition_dim else None

    def _shift_and_log_scale(self, x_a: torch.Tensor, condition: torch.Tensor | None):
        h = self.conv_in(x_a)
        if self.condition is not None:
            h = h + self.condition(condition)[:, :, None, None]  # c as a per-channel bias
        h = self.conv_out(F.relu(self.conv_mid(F.relu(h))))
        # s = sigmoid(h + 2) as in Glow's code bounds the forward pass, s in (0, 1); but the
        # inverse divides by s, and on latents unlike the training data a tiny s multiplies
        # activations until they overflow (an early Glow gave non-finite pixels
        # for 58 % of its temperature-1 samples).
        # With min_scale m, s = m + (1 - m) sigmoid(h + 2) in (m, 1): the inverse gains at most
        # 1/m per coupling, so sampling stays finite. m = 0 is Glow's original coupling.
        raw = h[:, 1::2] + 2.0
        if self.min_scale == 0.0:
            return h[:, 0::2], F.logsigmoid(raw)
        return h[:, 0::2], torch.log(self.min_scale + (1 - self.min_scale) * torch.sigmoid(raw))

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None):
        """(y, sum log s) (RealNVP eq. 6)."""
        x_a, x_b = x.chunk(2, dim=1)
        t, log_s = self._shift_and_log_scale(x_a, condition)
        y_b = (x_b + t) * torch.exp(log_s)
        return torch.cat([x_a, y_b], dim=1), log_s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """x_b = y_b / s - t (RealNVP eq. 8)."""
        y_a, y_b = y.chunk(2, dim=1)
        t, log_s = self._shift_and_log_scale(y_a, condition)
        return torch.cat([y_a, y_b * torch.exp(-log_s) - t], dim=1)


class FlowStep(nn.Module):
    """One step of flow: ActNorm -> invertible 1x1 conv -> affine coupling (Glow fig. 2a)."""

    def __init__(self, channels: int, hidden_channels: int, condition_dim: int = 0,
                 min_scale: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList([ActNorm(channels), InvConv1x1(channels),
                                     AffineCoupling(channels, hidden_channels, condition_dim,
                                                    min_scale)])

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None):
        """(y, log|det|) summed over the three layers."""
        logdet = x.new_zeros(len(x))
        for layer in self.layers:
            x, layer_logdet = layer(x, condition)
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, y: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """The layers' inverses in reverse order."""
        for layer in reversed(self.layers):
            y = layer.inverse(y, condition)
        return y


class SplitPrior(nn.Module):
    """Factors out z2 of x = [z1, z2] as eps = (z2 - mu(z1)) / sigma(z1) (Glow `split2d`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.prior = ZeroConv2d(channels // 2, channels)  # -> (mu, log sigma) of z2

    def _moments(self, z1: torch.Tensor):
        h = self.prior(z1)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None):
        """(z1 kept, eps of z2, -sum log sigma): log N(z2; mu, sigma) = log N(eps) - sum log sigma."""
        z1, z2 = x.chunk(2, dim=1)
        mu, log_sigma = self._moments(z1)
        return z1, (z2 - mu) * torch.exp(-log_sigma), -log_sigma.flatten(1).sum(1)

    def inverse(self, z1: torch.Tensor, eps: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        """x = [z1, mu(z1) + sigma(z1) * eps]."""
        mu, log_sigma = self._moments(z1)
        return torch.cat([z1, mu + torch.exp(log_sigma) * eps], dim=1)


class TopPrior(nn.Module):
    """The last level's Gaussian: learned per-position (mu, log sigma), shifted by c if given."""

    def __init__(self, channels: int, size: int, condition_dim: int = 0):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, channels, size, size))
        self.log_sigma = nn.Parameter(torch.zeros(1, channels, size, size))
        self.condition = nn.Linear(condition_dim, 2 * channels) if condition_dim else None
        if self.condition is not None:  # zero: a new condition starts at the shared prior
            nn.init.zeros_(self.condition.weight)
            nn.init.zeros_(self.condition.bias)

    def _moments(self, condition: torch.Tensor | None):
        mu, log_sigma = self.mean, self.log_sigma
        if self.condition is not None:  # Glow's class-conditional prior (`ycond`)
            shift_mu, shift_log_sigma = self.condition(condition)[:, :, None, None].chunk(2, 1)
            mu, log_sigma = mu + shift_mu, log_sigma + shift_log_sigma
        return mu, log_sigma

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None):
        """(eps = (z - mu) / sigma, -sum log sigma)."""
        mu, log_sigma = self._moments(condition)
        logdet = _per_sample(-log_sigma.flatten(1).sum(1), len(z))  # [1] without a condition
        return (z - mu) * torch.exp(-log_sigma), logdet

    def inverse(self, eps: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """z = mu + sigma * eps."""
        mu, log_sigma = self._moments(condition)
        return mu + torch.exp(log_sigma) * eps


class Glow(nn.Module):
    """Images [B, C, S, S] <-> standard-normal latents eps [B, C*S*S]; log|det| exact."""

    def __init__(self, image_size: int, image_channels: int = 3, levels: int = 3,
                 steps_per_level: int = 8, hidden_channels: int = 128, condition_dim: int = 0,
                 min_scale: float = 0.0):
        super().__init__()
        if levels < 1 or image_size % 2 ** levels:
            raise ConfigError(f"image_size {image_size} must be a multiple of 2^levels "
                              f"({2 ** levels})", field="image_size")
        self.image_size, self.image_channels = image_size, image_channels
        self.condition_dim = condition_dim
        self.blocks, self.splits = nn.ModuleList(), nn.ModuleList()
        #: shape of each level's eps block [C, S, S], in the order they appear in the flat latent
        self.latent_shapes: list[tuple[int, int, int]] = []
        channels, size = image_channels, image_size
        for level in range(levels):
            channels, size = 4 * channels, size // 2
            self.blocks.append(nn.ModuleList(FlowStep(channels, hidden_channels, condition_dim,
                                                      min_scale)
                                             for _ in range(steps_per_level)))
            if level < levels - 1:
                self.splits.append(SplitPrior(channels))
                channels //= 2
                self.latent_shapes.append((channels, size, size))
        self.top = TopPrior(channels, size, condition_dim)
        self.latent_shapes.append((channels, size, size))
        self.latent_dim = image_channels * image_size ** 2

    def _check_condition(self, condition: torch.Tensor | None, batch: int) -> None:
        if self.condition_dim and (condition is None or condition.shape != (batch,
                                                                            self.condition_dim)):
            got = None if condition is None else tuple(condition.shape)
            raise ConfigError(f"this flow needs a condition of shape [{batch}, "
                              f"{self.condition_dim}], got {got}", field="condition",
                              fix="pass one condition vector per image")
        if not self.condition_dim and condition is not None:
            raise ConfigError("this flow is unconditional", field="condition",
                              fix="pass condition=None")

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None):
        """x [B, C, S, S] -> (eps [B, D], log|det d eps / dx| [B])."""
        self._check_condition(condition, len(x))
        h, logdet, parts = x, x.new_zeros(len(x)), []
        for level, steps in enumerate(self.blocks):
            h = squeeze(h)
            for step in steps:
                h, step_logdet = step(h, condition)
                logdet = logdet + step_logdet
            if level < len(self.splits):
                h, eps, prior_logdet = self.splits[level](h, condition)
            else:
                eps, prior_logdet = self.top(h, condition)
            logdet = logdet + prior_logdet
            parts.append(eps.flatten(1))
        return torch.cat(parts, dim=1), logdet

    def inverse(self, eps: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """eps [B, D] -> x [B, C, S, S], the exact inverse of `forward`."""
        self._check_condition(condition, len(eps))
        sizes = [math.prod(shape) for shape in self.latent_shapes]
        parts = [part.reshape(len(eps), *shape)
                 for part, shape in zip(eps.split(sizes, dim=1), self.latent_shapes)]
        h = None
        for level in reversed(range(len(self.blocks))):
            h = self.top.inverse(parts[level], condition) if level == len(self.splits) \
                else self.splits[level].inverse(h, parts[level], condition)
            for step in reversed(self.blocks[level]):
                h = step.inverse(h, condition)
            h = unsqueeze(h)
        return h

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | c) [B] in nats, a density on x's own scale (change of variables)."""
        eps, logdet = self(x, condition)
        log_normal = -0.5 * (eps.square() + math.log(2 * math.pi)).sum(1)
        return log_normal + logdet
