"""A small CLIP: image tower + (locked MiniLM) text features + projections + learned temperature.

The loss is the symmetric contrastive loss of the CLIP paper's pseudocode:

    I_e = l2_normalize(image_encoder(I) @ W_i);  T_e = l2_normalize(text_features(T) @ W_t)
    logits = I_e @ T_e.T * exp(t)
    loss = (cross_entropy(logits, labels, axis=0) + cross_entropy(logits, labels, axis=1)) / 2

With the text tower locked (the default, LiT-style), text features are the MiniLM pooled
vectors, computed once per caption and cached; only the image tower, both projections and the
temperature learn. Prompts never seen in training still land near the right images because
MiniLM already places "a crimson fruit" near "red apple".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class CLIPConfig:
    """Architecture of a CLIP model; stored in the weights' metadata and config.json."""

    image_size: int = 64
    tower: Literal["resnet"] = "resnet"
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks_per_stage: int = 2
    #: stride of the stem convolution: 2 quarters the cost of everything after it
    stem_stride: int = 1
    embed_dim: int = 256
    text_encoder: str = "minilm"
    text_dim: int = 384
    #: hidden width of the text projection MLP; 0 = a single linear map (keeps more of MiniLM)
    text_hidden: int = 512
    #: per-channel mean/std the image tower normalises with (inputs are RGB in [0, 1])
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self):
        if self.image_size < 16 or self.image_size % 8:
            raise ConfigError("must be a multiple of 8, at least 16", field="image_size")
        if not self.widths or min(self.widths) < 8:
            raise ConfigError("needs at least one stage of width >= 8", field="widths")
        if self.text_hidden < 0:
            raise ConfigError("must be >= 0 (0 = linear text projection)", field="text_hidden")


class _Block(nn.Module):
    """Pre-activation residual block (GroupNorm: batch statistics would tie samples together)."""

    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, channels_in), channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.norm2 = nn.GroupNorm(min(8, channels_out), channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.skip = (nn.Identity() if stride == 1 and channels_in == channels_out else
                     nn.Conv2d(channels_in, channels_out, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ResNetImageTower(nn.Module):
    """A ResNet sized for 32–64 px: stem, stride-2 stages, global average pool."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        widths = config.widths
        self.stem = nn.Conv2d(3, widths[0], 3, config.stem_stride, 1, bias=False)
        layers, channels = [], widths[0]
        for i, width in enumerate(widths):
            for j in range(config.blocks_per_stage):
                stride = 2 if (j == 0 and i > 0) else 1
                layers.append(_Block(channels, width, stride))
                channels = width
        self.stages = nn.Sequential(*layers)
        self.norm = nn.GroupNorm(min(8, channels), channels)
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))
        return F.silu(self.norm(h)).mean(dim=(2, 3))


class CLIPModel(nn.Module):
    """Image tower and text projection into one embedding space, with a learned temperature."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.image_tower = ResNetImageTower(config)
        self.image_projection = nn.Linear(self.image_tower.out_dim, config.embed_dim, bias=False)
        # A small MLP by default: the locked text features need re-shaping, not just rotating,
        # to match what pixels can tell apart. A single linear map (text_hidden=0) fits the
        # training names less tightly and keeps more of MiniLM's sense of paraphrase.
        hidden = ([nn.Linear(config.text_dim, config.text_hidden), nn.GELU()]
                  if config.text_hidden else [])
        self.text_projection = nn.Sequential(
            *hidden, nn.Linear(config.text_hidden or config.text_dim, config.embed_dim, bias=False))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(1, 3, 1, 1),
                             persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] RGB in [0,1] -> normalised tower input at the model's size (differentiable)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}",
                              field="images")
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear",
                                   antialias=True, align_corners=False)
        # channels-last is markedly faster for convolutions on CPU
        return ((images - self.image_mean) / self.image_std).contiguous(
            memory_format=torch.channels_last)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings [B, D] from RGB images in [0, 1]."""
        features = self.image_tower(self.preprocess(images))
        return F.normalize(self.image_projection(features), dim=-1)

    def encode_text_features(self, text_features: torch.Tensor) -> torch.Tensor:
        """Unit-norm text embeddings [N, D] from text-encoder pooled vectors [N, text_dim]."""
        return F.normalize(self.text_projection(text_features), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(t), clamped as in CLIP so the logits cannot blow up."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def contrastive_loss(self, images: torch.Tensor, text_features: torch.Tensor,
                         caption_ids: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, dict[str, float]]:
        """Symmetric InfoNCE over a batch of matching (image, text) pairs.

        Pairs that share a caption (common in procedural data) have identical text columns, so
        the loss treats them consistently as it is; `caption_ids` only keeps the batch accuracy
        from counting a duplicate caption as a miss.
        """
        image_emb = self.encode_image(images)
        text_emb = self.encode_text_features(text_features)
        logits = self.scale() * image_emb @ text_emb.T  # [B, B]
        labels = torch.arange(len(logits), device=logits.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        ids = labels if caption_ids is None else caption_ids
        hits = ids[logits.argmax(dim=1)] == ids
        return loss, {"batch_accuracy": hits.float().mean().item(),
                      "temperature": 1.0 / self.scale().item()}
