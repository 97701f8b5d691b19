"""A small conditional StyleGAN-like generator and a projection discriminator (networks only).

Generator (Karras et al. 2019/2020, "StyleGAN-lite"): a mapping MLP takes a normalised z and a
condition embedding to w; a learned 4x4 constant is refined by weight-modulated, demodulated
convolutions (StyleGAN2 eq. 1-3) up to the image size, with skip toRGB outputs summed across
resolutions. No per-pixel noise inputs: an image depends only on (z, condition).
Discriminator: residual conv blocks down to 4x4, minibatch standard deviation, and a projection
term <phi(x), embed(c)> (Miyato & Koyama 2018) so it judges "real for this caption".
Every weight uses the equalised learning rate (StyleGAN sec. 4.1): stored N(0, 1), scaled at
run time, so Adam's per-parameter step is the same for every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class GANConfig:
    """Architecture of a conditional GAN; stored in config.json and the weights' metadata."""

    image_size: int = 32
    z_dim: int = 64
    w_dim: int = 128
    condition_dim: int = 384  # MiniLM's pooled sentence vector
    mapping_layers: int = 4
    #: generator channels at 4x4, 8x8, ... up to image_size (one entry per resolution)
    channels: tuple[int, ...] = (128, 128, 64, 32)
    #: discriminator channels from image_size down to 4x4
    d_channels: tuple[int, ...] = (32, 64, 128, 128)
    #: StyleGAN uses 0.01; on short CPU budgets 0.1 learns the caption faster (16 px trial,
    #: 1,500 steps: checker 25 % vs 20 %)
    mapping_lr_multiplier: float = 0.1
    #: squash the image with tanh: flat synthetic backgrounds sit exactly at the range's end,
    #: which an unbounded output can only approach by luck
    output_tanh: bool = True

    def __post_init__(self):
        levels = int(round(math.log2(self.image_size))) - 1
        if self.image_size < 8 or 2 ** (levels + 1) != self.image_size:
            raise ConfigError(f"must be a power of two >= 8, got {self.image_size}",
                              field="image_size")
        for name in ("channels", "d_channels"):
            if len(getattr(self, name)) != levels:
                raise ConfigError(f"needs {levels} entries for {self.image_size} px",
                                  field=name, fix="one channel count per resolution from 4 px")


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate (and an optional lr multiplier)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.lr_multiplier = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_multiplier)


class EqualConv2d(nn.Module):
    """3x3 (or kxk) convolution with the equalised learning rate."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.gain = 1 / math.sqrt(in_channels * kernel * kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution, computed per sample without grouped convs.

    x * s, conv with the shared weight, then * the demodulation coefficient (StyleGAN2 eq. 3):
    the same result as modulating the weight, and a batch gives the same bytes as one sample.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, demodulate: bool = True,
                 kernel: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)  # styles start at 1
        self.gain = 1 / math.sqrt(in_channels * kernel * kernel)
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)  # [B, C_in]
        weight = self.weight * self.gain
        x = F.conv2d(x * styles[:, :, None, None], weight, padding=weight.shape[-1] // 2)
        if self.demodulate:  # sigma_j = sqrt(sum_{i,k} (s_i w_ijk)^2)
            d = torch.rsqrt((weight.square().sum(dim=(2, 3))[None] * styles[:, None].square())
                            .sum(dim=2) + 1e-8)  # [B, C_out]
            x = x * d[:, :, None, None]
        return x


class MappingNetwork(nn.Module):
    """(z, condition) -> w: normalised z concatenated with an embedded condition, then an MLP."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.embed = EqualLinear(config.condition_dim, config.z_dim) \
            if config.condition_dim else None
        in_features = config.z_dim * (2 if self.embed is not None else 1)
        layers = []
        for i in range(config.mapping_layers):
            layers.append(EqualLinear(in_features if i == 0 else config.w_dim, config.w_dim,
                                      lr_multiplier=config.mapping_lr_multiplier))
        self.layers = nn.ModuleList(layers)

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        x = _normalise(z)
        if self.embed is not None:
            x = torch.cat([x, _normalise(self.embed(condition))], dim=1)
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2) * math.sqrt(2)
        return x


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """Pixel-norm of a vector (StyleGAN's normalize_2nd_moment)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class SynthesisBlock(nn.Module):
    """Upsample x2, two modulated convs, and a toRGB added to the upsampled skip image."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int):
        super().__init__()
        self.conv0 = ModulatedConv2d(in_channels, out_channels, w_dim)
        self.conv1 = ModulatedConv2d(out_channels, out_channels, w_dim)
        self.bias0 = nn.Parameter(torch.zeros(out_channels))
        self.bias1 = nn.Parameter(torch.zeros(out_channels))
        self.to_rgb = ModulatedConv2d(out_channels, 3, w_dim, demodulate=False, kernel=1)

    def forward(self, x: torch.Tensor, rgb: torch.Tensor | None, w: torch.Tensor):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = _act(self.conv0(x, w) + self.bias0[None, :, None, None])
        x = _act(self.conv1(x, w) + self.bias1[None, :, None, None])
        y = self.to_rgb(x, w)
        if rgb is not None:
            y = y + F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False)
        return x, y


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


class Synthesis(nn.Module):
    """w -> image [B, 3, S, S] (unbounded; about [-1, 1] after training)."""

    def __init__(self, config: GANConfig):
        super().__init__()
        channels = config.channels
        self.const = nn.Parameter(torch.randn(channels[0], 4, 4))
        self.conv = ModulatedConv2d(channels[0], channels[0], config.w_dim)
        self.bias = nn.Parameter(torch.zeros(channels[0]))
        self.to_rgb = ModulatedConv2d(channels[0], 3, config.w_dim, demodulate=False, kernel=1)
        self.blocks = nn.ModuleList(SynthesisBlock(channels[i], channels[i + 1], config.w_dim)
                                    for i in range(len(channels) - 1))
        self.output_tanh = config.output_tanh

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        x = self.const[None].expand(w.shape[0], -1, -1, -1)
        x = _act(self.conv(x, w) + self.bias[None, :, None, None])
        rgb = self.to_rgb(x, w)
        for block in self.blocks:
            x, rgb = block(x, rgb, w)
        return torch.tanh(rgb) if self.output_tanh else rgb


class Generator(nn.Module):
    """(z, condition) -> image, through the interpolable intermediate latent w."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.mapping = MappingNetwork(config)
        self.synthesis = Synthesis(config)

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return self.synthesis(self.mapping(z, condition))


class DiscriminatorBlock(nn.Module):
    """Two convs and a 2x average-pool downsample, with a 1x1 residual path (StyleGAN2 resnet D)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels)
        self.conv1 = EqualConv2d(in_channels, out_channels)
        self.skip = EqualConv2d(in_channels, out_channels, kernel=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.avg_pool2d(self.skip(x), 2)
        x = F.avg_pool2d(_act(self.conv1(_act(self.conv0(x)))), 2)
        return (x + skip) / math.sqrt(2)


class Discriminator(nn.Module):
    """image (+ condition) -> realness logit [B]; projection on the condition embedding."""

    def __init__(self, config: GANConfig):
        super().__init__()
        channels = config.d_channels
        self.from_rgb = EqualConv2d(3, channels[0], kernel=1)
        self.blocks = nn.ModuleList(DiscriminatorBlock(channels[i], channels[i + 1])
                                    for i in range(len(channels) - 1))
        last = channels[-1]
        self.conv = EqualConv2d(last + 1, last)
        self.fc = EqualLinear(last * 16, last)
        self.out = EqualLinear(last, 1)
        self.embed = EqualLinear(config.condition_dim, last) if config.condition_dim else None

    def forward(self, images: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        x = _act(self.from_rgb(images))
        for block in self.blocks:
            x = block(x)
        # minibatch std (StyleGAN sec. 3.2 of PGGAN): lets D see a batch's lack of variety
        group = min(4, x.shape[0])
        while x.shape[0] % group:
            group -= 1
        stats = x.view(group, -1, *x.shape[1:]).std(dim=0, unbiased=False).mean(dim=(1, 2, 3))
        stats = stats.repeat(group)[:, None, None, None].expand(-1, 1, 4, 4)
        x = _act(self.conv(torch.cat([x, stats], dim=1)))
        features = _act(self.fc(x.flatten(1)))
        logit = self.out(features)[:, 0]
        if self.embed is not None and condition is not None:
            logit = logit + (features * self.embed(condition)).sum(dim=1) / math.sqrt(
                features.shape[1])
        return logit


class GAN(nn.Module):
    """Generator and discriminator in one module: what the shared loop trains and checkpoints."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
