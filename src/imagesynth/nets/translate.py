"""Image-to-image translation networks (networks only): U-Net, ResNet generator, PatchGAN.

- **U-Net generator** (pix2pix, Isola et al. 2017, sec. 3.2.1 and app. 6.1.1): an encoder of
  4x4 stride-2 convolutions (C64-C128-C256-C512-C512...) down to 1x1 and a mirrored decoder of
  4x4 stride-2 transposed convolutions; decoder layer i is concatenated with the encoder layer
  of the same size (skip connections), so low-level detail shared by input and output (edges,
  positions) bypasses the bottleneck. Dropout in the first decoder layers is the generator's
  only source of noise (the paper applies it at test time too); here it is drawn from explicit
  generators and is off when none is given, so a translation is deterministic by default.
- **ResNet generator** (Johnson et al. 2016, CycleGAN app. 7.2): c7s1-k, d2k, d4k, n residual
  blocks R4k, u2k, uk, c7s1-3, with reflection padding.
- **PatchGAN discriminator** (pix2pix sec. 3.2.2): C64-C128-C256-C512 and a 1-channel
  convolution; each output judges one overlapping patch (70x70 px for three stride-2 layers).
  `layers` sets the stride-2 count, so small images get the same fraction of the side judged.

Normalisation is instance norm everywhere (pix2pix's batch norm at batch size 1, CycleGAN's
choice): it is per sample, so an image's translation never depends on the rest of its batch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

#: dropout noise: None (off), one generator for a whole batch (training), or one per sample
Noise = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class TranslateNetConfig:
    """Architecture of the translation networks; stored in config.json."""

    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    generator: Literal["unet", "resnet"] = "unet"
    #: generator width at full resolution (the paper's ngf = 64); doubles per level up to max
    channels: int = 32
    max_channels: int = 256
    #: U-Net: how many of the first decoder layers use dropout (the paper: 3 of 8 at 256 px)
    dropout_layers: int = 2
    dropout: float = 0.5
    #: ResNet generator: residual blocks at 1/4 resolution (the paper: 6 at 128 px, 9 at 256)
    resnet_blocks: int = 4
    #: PatchGAN: width of its first layer (ndf) and its number of stride-2 layers
    d_channels: int = 32
    d_layers: int = 1

    def __post_init__(self):
        depth = int(round(math.log2(self.image_size))) if self.image_size > 0 else 0
        if self.image_size < 8 or 2 ** depth != self.image_size:
            raise ConfigError(f"must be a power of two >= 8, got {self.image_size}",
                              field="image_size")
        for name in ("in_channels", "out_channels", "channels", "max_channels", "d_channels",
                     "d_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if not 0 <= self.dropout_layers <= depth:
            raise ConfigError(f"must be in [0, {depth}] for {self.image_size} px, got "
                              f"{self.dropout_layers}", field="dropout_layers")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"must be in [0, 1), got {self.dropout}", field="dropout")
        if self.resnet_blocks < 0:
            raise ConfigError(f"must be >= 0, got {self.resnet_blocks}", field="resnet_blocks")
        if 2 ** self.d_layers > self.image_size // 4:
            raise ConfigError(f"{self.d_layers} stride-2 layers leave no patches at "
                              f"{self.image_size} px", field="d_layers",
                              fix="use fewer layers for small images")

    @property
    def unet_depth(self) -> int:
        """Stride-2 levels of the U-Net: down to 1x1, as pix2pix's U-Net at 256 px."""
        return int(round(math.log2(self.image_size)))


def noise_dropout(x: torch.Tensor, p: float, noise: Noise) -> torch.Tensor:
    """Inverted dropout whose mask comes from `noise` (identity when it is None)."""
    if noise is None or p == 0:
        return x
    if isinstance(noise, torch.Generator):
        u = torch.rand(x.shape, generator=noise, device=noise.device)
    else:
        if len(noise) != x.shape[0]:
            raise ConfigError(f"{len(noise)} generators for {x.shape[0]} images",
                              field="generators")
        u = torch.stack([torch.rand(x.shape[1:], generator=g, device=g.device) for g in noise])
    return x * (u.to(x.device) >= p).to(x.dtype) / (1 - p)


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class UNetGenerator(nn.Module):
    """pix2pix U-Net: x [B, C_in, S, S] -> y [B, C_out, S, S] in (-1, 1)."""

    def __init__(self, config: TranslateNetConfig):
        super().__init__()
        self.config = config
        depth = config.unet_depth
        widths = [min(config.channels * 2 ** i, config.max_channels) for i in range(depth)]
        self.widths = widths
        self.down = nn.ModuleList()
        for i in range(depth):
            source = config.in_channels if i == 0 else widths[i - 1]
            self.down.append(nn.Conv2d(source, widths[i], 4, stride=2, padding=1))
        # the first and innermost encoder layers have no norm (a 1x1 map has no statistics)
        self.down_norm = nn.ModuleList(
            nn.Identity() if i in (0, depth - 1) else _norm(widths[i]) for i in range(depth))
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):  # decoder layer producing level i's input size
            source = widths[i] if i == depth - 1 else 2 * widths[i]
            target = config.out_channels if i == 0 else widths[i - 1]
            self.up.append(nn.ConvTranspose2d(source, target, 4, stride=2, padding=1))
        self.up_norm = nn.ModuleList(
            _norm(widths[i - 1]) if i > 0 else nn.Identity() for i in reversed(range(depth)))

    def forward(self, x: torch.Tensor, noise: Noise = None) -> torch.Tensor:
        skips = []
        for i, (conv, norm) in enumerate(zip(self.down, self.down_norm)):
            x = norm(conv(x if i == 0 else F.leaky_relu(x, 0.2)))
            skips.append(x)
        skips.pop()  # the innermost output is the decoder's input, not a skip
        for j, (conv, norm) in enumerate(zip(self.up, self.up_norm)):
            x = norm(conv(F.relu(x)))
            if j < self.config.dropout_layers and j < len(self.up) - 1:
                x = noise_dropout(x, self.config.dropout, noise)
            if skips:
                x = torch.cat([x, skips.pop()], dim=1)  # [B, 2 w_i, S_i, S_i]
        return torch.tanh(x)


class ResidualBlock(nn.Module):
    """Two reflection-padded 3x3 convs with instance norm, added to the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels),
            nn.ReLU(), nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetGenerator(nn.Module):
    """CycleGAN's generator: x [B, C_in, S, S] -> y [B, C_out, S, S] in (-1, 1); no noise."""

    def __init__(self, config: TranslateNetConfig):
        super().__init__()
        self.config = config
        k = config.channels
        wide = [min(k * 2 ** i, config.max_channels) for i in range(3)]
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(config.in_channels, k, 7),
                                   _norm(k), nn.ReLU()]
        for i in range(2):  # d2k, d4k
            layers += [nn.Conv2d(wide[i], wide[i + 1], 3, stride=2, padding=1),
                       _norm(wide[i + 1]), nn.ReLU()]
        layers += [ResidualBlock(wide[2]) for _ in range(config.resnet_blocks)]
        for i in (2, 1):  # u2k, uk
            layers += [nn.ConvTranspose2d(wide[i], wide[i - 1], 3, stride=2, padding=1,
                                          output_padding=1), _norm(wide[i - 1]), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(k, config.out_channels, 7), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, noise: Noise = None) -> torch.Tensor:
        return self.body(x)


def build_generator(config: TranslateNetConfig) -> nn.Module:
    """The generator the config names (U-Net or ResNet)."""
    return UNetGenerator(config) if config.generator == "unet" else ResNetGenerator(config)


class PatchDiscriminator(nn.Module):
    """PatchGAN: image(s) [B, C, S, S] -> patch logits [B, 1, P, P], one per receptive field."""

    def __init__(self, in_channels: int, config: TranslateNetConfig):
        super().__init__()
        ndf, cap = config.d_channels, config.max_channels
        width = lambda n: min(ndf * 2 ** n, cap)  # noqa: E731
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2)]
        for n in range(1, config.d_layers):
            layers += [nn.Conv2d(width(n - 1), width(n), 4, stride=2, padding=1),
                       _norm(width(n)), nn.LeakyReLU(0.2)]
        n = config.d_layers
        layers += [nn.Conv2d(width(n - 1), width(n), 4, stride=1, padding=1), _norm(width(n)),
                   nn.LeakyReLU(0.2), nn.Conv2d(width(n), 1, 4, stride=1, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def patch_receptive_field(layers: int) -> int:
    """Side in pixels of the input patch one PatchGAN output sees (70 for 3 stride-2 layers)."""
    field = 4  # the final 4x4 stride-1 conv
    field = field + 3  # the 4x4 stride-1 conv before it
    for _ in range(layers):  # each 4x4 stride-2 conv below: r -> 2 (r - 1) + 4
        field = 2 * (field - 1) + 4
    return field


class TranslationNets(nn.Module):
    """What the shared loop trains and checkpoints: the generator(s) and discriminator(s).

    pix2pix: `g_ab` and, with the adversarial term, a conditional `d_b` seeing (input, output)
    stacked on channels. CycleGAN: `g_ab`, `g_ba` and unconditional `d_a`, `d_b`.
    """

    def __init__(self, config: TranslateNetConfig, two_way: bool, discriminators: bool):
        super().__init__()
        self.config = config
        self.g_ab = build_generator(config)
        reverse = dataclasses.replace(config, in_channels=config.out_channels,
                                      out_channels=config.in_channels)
        self.g_ba = build_generator(reverse) if two_way else None
        if two_way and discriminators:
            self.d_a = PatchDiscriminator(config.in_channels, config)
            self.d_b = PatchDiscriminator(config.out_channels, config)
        elif discriminators:
            self.d_a = None
            self.d_b = PatchDiscriminator(config.in_channels + config.out_channels, config)
        else:
            self.d_a = self.d_b = None
