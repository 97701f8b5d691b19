"""ControlNet networks (Zhang et al. 2023) for our text-conditioned UNets, built by diffusers.

`ControlNetModel.from_unet` copies the UNet's encoder and middle block and joins them to the
UNet through zero-initialised 1x1 convolutions, so a fresh ControlNet changes nothing. Two things
differ from Stable Diffusion's setting, and both are handled here:

- the condition image enters at the *image* resolution and is downsampled by the conditioning
  embedding to the grid the UNet works on: factor 8 for SD's latents, 1 for our pixel-space
  models, 4 for 64 px images over 16x16 latents (one stride-2 stage per factor of 2);
- our prompts are padded token states with a mask. diffusers' ControlNetModel has no
  `encoder_attention_mask`, so `TextMaskedAttnProcessor` applies the mask in its cross-attention
  exactly as UNet2DConditionModel does (a -10000 bias on padded tokens).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import ControlNetModel
from diffusers.models.attention_processor import AttnProcessor2_0

from ..errors import ConfigError

#: channels of the conditioning embedding's stages (diffusers' default, cut to the stages needed)
EMBEDDING_CHANNELS = (16, 32, 96, 256)


class TextMaskedAttnProcessor(AttnProcessor2_0):
    """Scaled dot-product attention whose cross-attention ignores padded text tokens."""

    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 text_mask_bias: torch.Tensor | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None and text_mask_bias is not None:
            attention_mask = text_mask_bias
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def embedding_channels(downsample_factor: int) -> tuple[int, ...]:
    """Conditioning-embedding stages for a condition image `downsample_factor` times the grid."""
    stages = math.log2(downsample_factor) if downsample_factor >= 1 else -1
    if stages != int(stages) or not 0 <= stages < len(EMBEDDING_CHANNELS):
        raise ConfigError(f"the image is {downsample_factor}x the denoiser's grid",
                          field="downsample_factor", fix="use a power of two from 1 to 8")
    return EMBEDDING_CHANNELS[:int(stages) + 1]


def build_controlnet(unet_module, downsample_factor: int = 1,
                     conditioning_channels: int = 3) -> ControlNetModel:
    """A ControlNet copied from `unet_module` (a `TextConditionedUNet`), zero-initialised outputs."""
    controlnet = ControlNetModel.from_unet(
        unet_module.unet, conditioning_embedding_out_channels=embedding_channels(downsample_factor),
        conditioning_channels=conditioning_channels)
    controlnet.set_attn_processor(TextMaskedAttnProcessor())
    return controlnet


def controlnet_from_config(config: dict[str, Any]) -> ControlNetModel:
    """An (untrained) ControlNet from the config a model folder stores."""
    controlnet = ControlNetModel.from_config(config)
    controlnet.set_attn_processor(TextMaskedAttnProcessor())
    return controlnet


def controlnet_config(controlnet: ControlNetModel) -> dict[str, Any]:
    """The JSON-serialisable diffusers config of a ControlNet (for config.json)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(controlnet.config).items()
            if not k.startswith("_")}


def text_mask_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Token mask [B, T] (1 = real) -> the additive bias [B, 1, T] UNet2DConditionModel uses."""
    if mask is None:
        return None
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


def controlnet_residuals(controlnet: ControlNetModel, network_input: torch.Tensor,
                         timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                         encoder_attention_mask: torch.Tensor | None,
                         control_image: torch.Tensor,
                         added_cond_kwargs: dict[str, torch.Tensor] | None = None
                         ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(down residuals, mid residual) of one ControlNet at conditioning scale 1, in its dtype.

    `added_cond_kwargs` is SDXL's pooled text and size conditioning, as its UNet gets it.
    """
    dtype = controlnet.dtype  # a half-precision ControlNet beside a half-precision UNet
    kwargs: dict = {}
    bias = text_mask_bias(encoder_attention_mask, dtype)
    if bias is not None:
        kwargs["cross_attention_kwargs"] = {"text_mask_bias": bias}
    if added_cond_kwargs is not None:
        kwargs["added_cond_kwargs"] = {k: v.to(dtype) for k, v in added_cond_kwargs.items()}
    down, mid = controlnet(network_input.to(dtype), timestep,
                           encoder_hidden_states=encoder_hidden_states.to(dtype),
                           controlnet_cond=control_image.to(dtype), conditioning_scale=1.0,
                           return_dict=False, **kwargs)
    return list(down), mid
