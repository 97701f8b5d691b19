"""The normalizing-flow family: Glow trained by exact maximum likelihood, reported in bits/dim.

Data are 8-bit images u in {0..255}^D. Dequantisation (Theis et al. 2016; RealNVP sec. 4.1)
trains a continuous density on x = (u + n) / 128 - 1, n ~ U[0, 1)^D, which maps each of the
256 bins onto a cell of width 2/256 in [-1, 1]. The flow gives log p(x) by change of variables
(`imagesynth.nets.flow`), and by Jensen log P(u) >= E_n[log p(x)] + D log(2/256), so the loss
    bits/dim = -(log p(x) + D log(2/256)) / (D ln 2) = -log p(x) / (D ln 2) + log2(256 / 2)
bounds the discrete data's code length; a uniform density on [-1, 1]^D scores exactly 8.
`sample`, `encode` and `decode` follow the family interface (`imagesynth.families.base`); the
latent is the flow's standard-normal eps [B, 3*S*S], so temperature just scales it (Glow sec. 5).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..config import from_dict, to_dict
from ..data.folder import CaptionedImageFolder
from ..diffusion.noise import randn_like_per_sample
from ..errors import ConfigError, InputImageError
from ..train.datasets import ImageTensorSet, spread_subset
from ..nets.flow import Glow
from ..registry import write_model_folder
from ..train import (BatchRandom, FamilyRunResult, TrainConfig, is_main_process, shard_aware,
                     train)
from ..train.distributed import check_batch_split
from .common import load_family_model, training_folder

FAMILY = "flow"
#: 8-bit data: 256 bins mapped onto [DATA_LOW, DATA_HIGH]
NUM_BINS, DATA_LOW, DATA_HIGH = 256, -1.0, 1.0
#: images whose statistics initialise every ActNorm before training (Glow's init batch)
INIT_IMAGES = 256
#: at most this many validation images enter each periodic bits/dim evaluation
EVAL_IMAGES = 512


@dataclass(frozen=True)
class FlowConfig:
    """Architecture of a Glow; stored in config.json and the weights' metadata."""

    image_size: int = 32
    image_channels: int = 3
    #: L: squeeze -> K steps -> split, repeated; the last level keeps what is left
    levels: int = 3
    #: K: steps of flow (ActNorm, 1x1 conv, coupling) per level
    steps_per_level: int = 8
    #: width of each coupling's conv net
    hidden_channels: int = 128
    #: length of the optional condition vector (a MiniLM pooled 384-d vector, a one-hot label)
    condition_dim: int = 0
    #: lower bound m of every coupling's scale s in (m, 1); 0 is Glow's original (whose inverse
    #: can overflow on unusual latents), so models saved before this field load unchanged
    min_scale: float = 0.0

    def __post_init__(self):
        for name in ("image_channels", "levels", "steps_per_level", "hidden_channels"):
            if getattr(self, name) < 1:
                raise ConfigError("must be at least 1", field=name)
        if self.condition_dim < 0:
            raise ConfigError("must be 0 (unconditional) or positive", field="condition_dim")
        if not 0.0 <= self.min_scale < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.min_scale}", field="min_scale",
                              fix="use 0.5 (bounded inverse) or 0 (Glow's original coupling)")
        if self.image_size < 1 or self.image_size % 2 ** self.levels:
            raise ConfigError(f"must be a positive multiple of 2^levels ({2 ** self.levels})",
                              field="image_size", fix="change image_size or levels")


#: `tiny` is for tests (8 px, trains in seconds); `shapes` is for 32 px ShapesWorld (1.6 M params)
PRESETS: dict[str, FlowConfig] = {
    "tiny": FlowConfig(image_size=8, levels=2, steps_per_level=2, hidden_channels=16,
                       min_scale=0.5),
    "shapes": FlowConfig(image_size=32, levels=3, steps_per_level=8, hidden_channels=128,
                         min_scale=0.5),
}
#: loop settings per preset; Glow trains at LR 1e-3 after a warm-up
LOOP_PRESETS: dict[str, dict] = {
    "tiny": dict(batch_size=16, learning_rate=2e-3, warmup_steps=5, max_steps=60,
                 eval_every=30, ema_decay=0.99),
    "shapes": dict(batch_size=64, learning_rate=1e-3, warmup_steps=200, max_steps=10000,
                   eval_every=500),
}
#: fewer training images than this and the preset memorises rather than models the data
MIN_IMAGES: dict[str, int] = {"tiny": 32, "shapes": 1000}


def flow_config(preset: str, **overrides) -> FlowConfig:
    """The named preset's config, with fields replaced by `overrides`."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown flow preset {preset!r}", field="preset",
                          fix=f"choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def dequantize(images_u8: torch.Tensor, generator: torch.Generator | BatchRandom) -> torch.Tensor:
    """uint8 [B, C, H, W] -> x = (u + n) / 128 - 1 in [-1, 1), n ~ U[0, 1) from `generator`."""
    rng = BatchRandom.of(generator, len(images_u8))
    noise = rng.rand(*images_u8.shape[1:], device=rng.generator.device)
    bin_width = (DATA_HIGH - DATA_LOW) / NUM_BINS
    return DATA_LOW + (images_u8.float() + noise.to(images_u8.device)) * bin_width


def discrete_bits_per_dim(log_px: torch.Tensor, dims: int) -> torch.Tensor:
    """Bits/dim of 8-bit data from log p(x) [B] of dequantised x in [-1, 1] (module docstring)."""
    # -log p(x) / (D ln 2) is the continuous density's cost; each bin's cell has volume
    # (2/256) per dimension, so its probability costs log2(256/2) = 7 more bits per dimension.
    return -log_px / (dims * math.log(2)) + math.log2(NUM_BINS / (DATA_HIGH - DATA_LOW))


class FlowModel(nn.Module):
    """A Glow behind the family interface: exact log p(x), sampling, encode/decode."""

    family = FAMILY
    has_latent = True

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.net = Glow(config.image_size, config.image_channels, config.levels,
                        config.steps_per_level, config.hidden_channels, config.condition_dim,
                        config.min_scale)

    @property
    def image_size(self) -> int:
        """The side length of the images it models."""
        return self.config.image_size

    @property
    def latent_dim(self) -> int:
        """D = C * S * S: a flow's latent has the data's dimension."""
        return self.net.latent_dim

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> None:
        """Data-dependent ActNorm init from a batch of dequantised images (a no-op once done)."""
        was_training = self.training
        self.train()  # ActNorm initialises only in a training forward
        self.net(x, condition)
        self.train(was_training)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None):
        """x [B, C, S, S] in [-1, 1] -> (eps [B, D], log|det| [B])."""
        return self.net(x, condition)

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | c) [B] in nats, as a density on [-1, 1]^D."""
        return self.net.log_prob(x, condition)

    def _check_images(self, images: torch.Tensor) -> None:
        expected = (self.config.image_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise InputImageError(f"expected images of shape [B, {expected[0]}, {expected[1]}, "
                                  f"{expected[2]}], got {tuple(images.shape)}", field="images",
                                  fix=f"resize to {self.image_size} px, values in [-1, 1]")

    def encode(self, images: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> eps [B, D]; deterministic (no dequantisation noise)."""
        self._check_images(images)
        return self.net(images, condition)[0]

    def decode(self, latent: torch.Tensor, condition: torch.Tensor | None = None,
               clamp: bool = True) -> torch.Tensor:
        """eps [B, D] -> images [B, C, S, S], clamped to [-1, 1] unless `clamp=False`."""
        if latent.ndim != 2 or latent.shape[1] != self.latent_dim:
            raise InputImageError(f"expected latents of shape [B, {self.latent_dim}], got "
                                  f"{tuple(latent.shape)}", field="latents",
                                  fix="pass latents produced by this flow's encode()")
        images = self.net.inverse(latent, condition)
        return images.clamp(DATA_LOW, DATA_HIGH) if clamp else images

    @torch.no_grad()
    def sample(self, n: int, generators: Sequence[torch.Generator],
               condition: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """`n` images [n, C, S, S] in [-1, 1]: x = f^-1(T * eps), eps_i ~ N(0, I) from generator i."""
        if not temperature > 0:  # also refuses NaN
            raise ConfigError(f"must be positive, got {temperature}", field="temperature",
                              fix="use a temperature in (0, 1]; Glow samples at about 0.7")
        if n < 1:
            raise ConfigError(f"must be at least 1, got {n}", field="n")
        parameter = next(self.parameters())
        template = torch.empty(n, self.latent_dim, dtype=parameter.dtype)
        eps = randn_like_per_sample(template, list(generators)).to(parameter.device)
        return self.decode(temperature * eps, condition)


def _images_and_condition(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch is uint8 images, or a dict with "image" and an optional "condition"."""
    if torch.is_tensor(batch):
        return batch, None
    return batch["image"], batch.get("condition")


class FlowObjective:
    """Mean bits/dim of a dequantised batch; the uniform noise comes from the step generator."""

    @shard_aware
    def __call__(self, model: FlowModel, batch, generator: torch.Generator | BatchRandom):
        images_u8, condition = _images_and_condition(batch)
        x = dequantize(images_u8, generator)
        bits = discrete_bits_per_dim(model.log_prob(x, condition), x[0].numel()).mean()
        return bits, {"bits_per_dim": bits.item()}


@torch.no_grad()
def bits_per_dim(model: FlowModel, images_u8: torch.Tensor,
                 condition: torch.Tensor | None = None, seed: int = 0,
                 batch_size: int = 256) -> float:
    """Held-out bits/dim of uint8 images, dequantised with noise seeded by `seed` (repeatable)."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)  # CPU: same noise on every device
    total = 0.0
    for start in range(0, len(images_u8), batch_size):
        batch = images_u8[start:start + batch_size]
        x = dequantize(batch, generator).to(device)
        part = None if condition is None else condition[start:start + batch_size].to(device)
        total += discrete_bits_per_dim(model.log_prob(x, part), x[0].numel()).double().sum()
    return float(total) / len(images_u8)


def train_flow(data: str | Path, out: str | Path, preset: str = "shapes",
               overrides: dict | None = None, flow_overrides: dict | None = None,
               show_progress: bool = True, resume: bool = True,
               stop_after: int | None = None) -> FamilyRunResult:
    """Train a Glow on a captioned image folder into `out`; write `out/model/` with its bits/dim.

    Periodic evals log held-out (val split) bits/dim; the final eval adds train-split bits/dim.
    """
    if preset not in LOOP_PRESETS:
        raise ConfigError(f"unknown flow preset {preset!r}", field="preset",
                          fix=f"choose one of {', '.join(LOOP_PRESETS)}")
    flow = flow_config(preset, **(flow_overrides or {}))
    if flow.condition_dim:
        raise ConfigError("train_flow trains unconditional flows", field="condition_dim",
                          fix="train a conditional flow with imagesynth.train.train and "
                              "FlowObjective on {'image', 'condition'} batches")
    config = from_dict(TrainConfig, {"checkpoint_every": 250, **LOOP_PRESETS[preset],
                                     **(overrides or {})})
    check_batch_split(config.batch_size, config.grad_accum)  # before reading the data
    started, out = time.perf_counter(), Path(out)
    train_folder = training_folder(data, flow.image_size, preset, MIN_IMAGES[preset])
    train_set = ImageTensorSet(train_folder)
    val_folder = CaptionedImageFolder(data, resolution=flow.image_size, split="val")
    val_images = ImageTensorSet(val_folder).images if len(val_folder) else train_set.images
    eval_images = spread_subset(val_images, EVAL_IMAGES)

    def evaluate(step: int, model: FlowModel) -> dict[str, float]:
        return {"bits_per_dim_val": bits_per_dim(model, eval_images)}

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = FlowModel(flow)
    # ActNorm's data-dependent init happens before the loop copies the model into its EMA, so
    # the average starts from initialised weights (a resumed run overwrites it from the checkpoint).
    init_noise = torch.Generator().manual_seed(config.seed)
    model.initialize(dequantize(spread_subset(train_set.images, INIT_IMAGES), init_noise))
    result = train(model, train_set, FlowObjective(), config, out, on_eval=evaluate,
                   show_progress=show_progress, resume=resume, stop_after=stop_after)
    if not is_main_process():  # under torchrun rank 0 evaluates and writes the model folder
        return FamilyRunResult(out / "model", result.step, result.stopped, result.last_metrics,
                               time.perf_counter() - started)
    final = (result.ema if result.ema is not None else model).eval()
    final_eval = {"bits_per_dim_val": bits_per_dim(final, val_images),
                  "bits_per_dim_train": bits_per_dim(final, spread_subset(train_set.images,
                                                                          EVAL_IMAGES)),
                  "val_images": len(val_images)}
    folder_config = {"family": FAMILY, "flow": to_dict(flow), "train": to_dict(config),
                     "preset": preset, "steps": result.step, "data": Path(data).name,
                     "eval": final_eval}
    card = _card(preset, flow, config, result.step, Path(data).name, final_eval,
                 sum(p.numel() for p in final.parameters()))
    model_dir = write_model_folder(out / "model", final.state_dict(), folder_config, card)
    return FamilyRunResult(model_dir, result.step, result.stopped, final_eval,
                           time.perf_counter() - started)


def load_flow(spec: str | Path, device: str | torch.device = "cpu") -> FlowModel:
    """Load a flow by registry name or model-folder path (hash-verified), in eval mode."""
    return load_family_model(spec, FAMILY, "a flow",
                             lambda config: FlowModel(from_dict(FlowConfig, config["flow"])),
                             device)


def _card(preset: str, flow: FlowConfig, train_config: TrainConfig, steps: int,
          data_name: str, final_eval: dict, parameters: int) -> str:
    overrides = {"max_steps": train_config.max_steps, "batch_size": train_config.batch_size,
                 "learning_rate": train_config.learning_rate, "seed": train_config.seed}
    command = (f"python -c \"from imagesynth.families.flow import train_flow; "
               f"train_flow('{data_name}', 'OUT', preset='{preset}', overrides={overrides})\"")
    return (f"# Normalizing flow (Glow) trained on {data_name}\n\n"
            f"Glow (Kingma & Dhariwal 2018), preset `{preset}`: {flow.image_size} px, "
            f"{flow.levels} levels x {flow.steps_per_level} steps, coupling width "
            f"{flow.hidden_channels}, {parameters:,} parameters; {steps} of "
            f"{train_config.max_steps} steps.\n\n"
            f"Reproduce (rerun the same command to resume):\n\n    {command}\n\n"
            f"Exact negative log-likelihood of the 8-bit data in bits/dim (uniform "
            f"dequantisation, one noise draw, EMA weights; uniform baseline 8.0): "
            f"`{json.dumps(final_eval)}`\n")
