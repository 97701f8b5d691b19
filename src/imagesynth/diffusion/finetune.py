"""Start a diffusion run from a trained model's weights (fine-tuning) instead of random ones.

The new run may widen the UNet's inputs: `shapes` -> `shapes-xy` adds coordinate maps to the
image, and `minilm` -> `minilm+words` appends the word embeddings to the text states that
cross-attention reads. The old inputs keep their trained weights and the new ones start at
zero, so the widened network computes exactly what the old one did until training moves them
(the way Stable Diffusion's inpainting model was initialised from the text-to-image one).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

FIX = "fine-tune from a diffusion model with the same size, data space and text encoder"

#: text encoders whose states begin with another's states (the rest is new input, started at zero)
TEXT_WIDENINGS = {("minilm", "minilm+words")}


def _expect_equal(spec: str, name: str, theirs, ours) -> None:
    if theirs != ours:
        raise ConfigError(f"{spec} has {name} {theirs!r}, this run needs {ours!r}",
                          field="init_from", fix=FIX)


def initialise_from(network: nn.Module, spec: str, *, text_encoder: str, image_size: int,
                    channels: int, sample_size: int, autoencoder_sha256: str | None) -> dict:
    """Copy model `spec`'s weights into `network` in place; return its name and weights hash."""
    registry = Registry()
    entry = registry.get(spec)
    config = entry.config()
    if config.get("family") != "diffusion":
        raise ConfigError(f"{spec} is not a diffusion model (family {config.get('family')!r})",
                          field="init_from", fix=FIX)
    if (config.get("text_encoder"), text_encoder) not in TEXT_WIDENINGS:
        _expect_equal(spec, "text encoder", config.get("text_encoder"), text_encoder)
    _expect_equal(spec, "image size", config.get("image_size"), image_size)
    _expect_equal(spec, "channels", config.get("channels"), channels)
    _expect_equal(spec, "sample size", config.get("sample_size"), sample_size)
    _expect_equal(spec, "autoencoder", (config.get("autoencoder") or {}).get("sha256"),
                  autoencoder_sha256)
    source = registry.load_state_dict(entry)
    target = network.state_dict()
    missing = sorted(set(target) - set(source))
    extra = sorted(set(source) - set(target))
    if missing or extra:
        key = (missing or extra)[0]
        raise ConfigError(f"{spec} has a different UNet ({'no' if missing else 'an extra'} "
                          f"tensor {key!r})", field="init_from",
                          fix="use the preset the model was trained with (see its config.json)")
    with torch.no_grad():  # state_dict() tensors share the parameters' storage
        for key, tensor in target.items():
            theirs = source[key].to(tensor.dtype)
            if theirs.shape == tensor.shape:
                tensor.copy_(theirs)
            elif _widened_input(key, theirs.shape, tensor.shape):
                tensor.zero_()
                tensor[:, :theirs.shape[1]].copy_(theirs)
            else:
                raise ConfigError(f"{spec}: {key} is {tuple(theirs.shape)}, this UNet needs "
                                  f"{tuple(tensor.shape)}", field="init_from",
                                  fix="use the preset the model was trained with, or one that "
                                      "only adds input channels")
    return {"spec": spec, "sha256": entry.weights_sha256}


def _widened_input(key: str, theirs: torch.Size, ours: torch.Size) -> bool:
    """The first convolution with extra input channels, or a cross-attention key/value map with
    extra text features (all other dimensions equal)."""
    if len(ours) != len(theirs) or theirs[0] != ours[0] or theirs[2:] != ours[2:]:
        return False
    reads_input = (key.endswith("conv_in.weight") and len(ours) == 4) or (
        len(ours) == 2 and key.endswith(("attn2.to_k.weight", "attn2.to_v.weight")))
    return reads_input and theirs[1] < ours[1]
