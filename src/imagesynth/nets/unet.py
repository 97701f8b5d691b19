"""Text-conditioned UNets: named presets that build diffusers' `UNet2DConditionModel`.

Cross-attention attends to the text encoder's token states (384-d for MiniLM). Presets are sized
for the two kinds of bundled model: 32 px pixel space (ShapesWorld) and 16x16x4 latents (64 px
emoji through an autoencoder with downsample factor 4), plus a "tiny" one for tests.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from ..errors import ConfigError

_DOWN = {"attn": "CrossAttnDownBlock2D", "plain": "DownBlock2D"}
_UP = {"attn": "CrossAttnUpBlock2D", "plain": "UpBlock2D"}


def _unet_kwargs(sample_size: int, channels: int, widths: tuple[int, ...],
                 attention: tuple[bool, ...], layers_per_block: int, head_dim: int,
                 norm_groups: int, text_dim: int, coordinates: bool = False) -> dict[str, Any]:
    kinds = ["attn" if a else "plain" for a in attention]
    extra = COORDINATE_CHANNELS if coordinates else 0
    return dict(sample_size=sample_size, in_channels=channels + extra, out_channels=channels,
                coordinate_channels=extra,
                block_out_channels=list(widths), layers_per_block=layers_per_block,
                down_block_types=[_DOWN[k] for k in kinds],
                up_block_types=[_UP[k] for k in reversed(kinds)],
                mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=text_dim,
                attention_head_dim=head_dim, norm_num_groups=norm_groups)


#: x and y maps in [-1, 1] appended to the input (CoordConv): where "on the left" is, made explicit
COORDINATE_CHANNELS = 2

#: preset name -> keyword arguments of UNet2DConditionModel (text_dim filled in by build_unet)
PRESETS: dict[str, dict[str, Any]] = {
    # 16 px pixel space, for tests: trains in seconds.
    "tiny": dict(sample_size=16, channels=3, widths=(16, 32), attention=(False, True),
                 layers_per_block=1, head_dim=8, norm_groups=8),
    # 32 px pixel space (ShapesWorld); attention only at 8x8, where relations are decided: CPU
    # self-attention over 16x16 tokens cost 60 % of a training step for no visible gain.
    "shapes": dict(sample_size=32, channels=3, widths=(32, 64, 128), attention=(False, False, True),
                   layers_per_block=1, head_dim=32, norm_groups=16),
    # The same plus coordinate channels: `shapes` placed objects at chance after 4,000 steps.
    "shapes-xy": dict(sample_size=32, channels=3, widths=(32, 64, 128),
                      attention=(False, False, True), layers_per_block=1, head_dim=32,
                      norm_groups=16, coordinates=True),
    # 16x16x4 latents of 64 px images (autoencoder downsample factor 4).
    "emoji": dict(sample_size=16, channels=4, widths=(64, 128, 192), attention=(False, True, True),
                  layers_per_block=1, head_dim=32, norm_groups=32),
}


def unet_config(preset: str, text_dim: int = 384, **overrides: Any) -> dict[str, Any]:
    """The full UNet2DConditionModel keyword arguments of a named preset (JSON-serialisable)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown UNet preset {preset!r}", field="preset",
                          fix=f"choose one of: {', '.join(PRESETS)}")
    settings = {**PRESETS[preset], **overrides}
    return _unet_kwargs(text_dim=text_dim, **settings)


class TextConditionedUNet(nn.Module):
    """The network F of the EDM denoiser: F(c_in x, c_noise, token states, token mask).

    `c_noise = ln(sigma) / 4` is fed as diffusers' continuous timestep; padded text tokens are
    excluded from cross-attention through `encoder_attention_mask`.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = {"coordinate_channels": 0, **config}
        self.coordinate_channels = int(self.config["coordinate_channels"])
        #: channels of a source image appended last (instruction editing); 0 = none
        self.source_channels = int(self.config.get("source_channels", 0))
        self.unet = UNet2DConditionModel(**{k: v for k, v in self.config.items()
                                            if k not in ("coordinate_channels", "source_channels")})

    @property
    def channels(self) -> int:
        """Channels of the images or latents the UNet denoises."""
        return self.config["out_channels"]

    @property
    def sample_size(self) -> int:
        """Side length (pixels or latent cells) the UNet was built for."""
        return self.config["sample_size"]

    def network_input(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """What the diffusers UNet reads: x, plus coordinate maps when the preset has them, plus
        the source image of an instruction model (zeros, its "no image" input, when absent)."""
        parts = [x, coordinate_maps(x)] if self.coordinate_channels else [x]
        if self.source_channels:
            parts.append(torch.zeros_like(x[:, :self.source_channels]) if source is None
                         else source.to(x.dtype).expand(x.shape[0], -1, -1, -1))
        elif source is not None:
            raise ConfigError("this model takes no source image", field="model",
                              fix="use an instruction model (`imagesynth train instruct`)")
        return torch.cat(parts, dim=1) if len(parts) > 1 else x

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None,
                down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
                mid_block_additional_residual: torch.Tensor | None = None,
                source: torch.Tensor | None = None) -> torch.Tensor:
        """Raw network output F for inputs x [B,C,H,W] and text states [B,T,D]; the residuals
        are a ControlNet's, added to the skip connections (`diffusion.control`); `source`
        [B,C,H,W] is an instruction model's source image, in [-1, 1] and not noised."""
        c_noise = c_noise.expand(x.shape[0]) if c_noise.ndim == 0 else c_noise
        return self.unet(self.network_input(x, source), c_noise, encoder_hidden_states=encoder_hidden_states,
                         encoder_attention_mask=encoder_attention_mask,
                         down_block_additional_residuals=down_block_additional_residuals,
                         mid_block_additional_residual=mid_block_additional_residual,
                         return_dict=False)[0]


def coordinate_maps(x: torch.Tensor) -> torch.Tensor:
    """[B, 2, H, W] maps of the column and row position in [-1, 1], like `x` in dtype and device."""
    b, _, h, w = x.shape
    rows = torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device)
    columns = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device)
    grid = torch.stack(torch.meshgrid(columns, rows, indexing="xy"))  # [2, H, W]: x then y
    return grid.expand(b, -1, -1, -1)


def build_unet(preset_or_config: str | dict[str, Any], text_dim: int = 384,
               **overrides: Any) -> TextConditionedUNet:
    """A freshly initialised UNet from a preset name or a full config dict."""
    config = (unet_config(preset_or_config, text_dim, **overrides)
              if isinstance(preset_or_config, str) else dict(preset_or_config))
    return TextConditionedUNet(config)


def parameter_count(module: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())
