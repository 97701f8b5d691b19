"""Train an instruction-editing model (InstructPix2Pix, Brooks et al. 2023) on the shared loop.

The model is a trained text-to-image diffusion model whose UNet reads the source image as extra
input channels (`source_channels`, appended after the image and any coordinate maps). The new
input weights start at zero (`diffusion/finetune.py`), so before training the model computes
exactly what the base model did. The whole UNet then trains on (before, instruction, after)
triples with the EDM loss of `families/diffusion.py`; as in the paper, 5 % of the samples drop
the instruction, 5 % the source image and 5 % both, so that sampling can guide on each
(`diffusion/instruct.py`). A dropped instruction is the encoding of "" (as in text-to-image
training) and a dropped image is all zeros. The model folder stays family "diffusion" (it
generates from text alone too, with a zero source); its `instruct` entry marks it as an
instruction model and records the base model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import from_dict, to_dict
from ..data.shapes_edits import read_triples
from ..diffusion.denoisers import EDMDenoiser
from .common import training_figures
from ..errors import ConfigError, DataError
from ..io.files import atomic_write_text
from ..io.images import open_image
from ..nets.unet import build_unet, parameter_count
from ..registry import Registry, write_model_folder
from ..text.expand import CAPTIONS_FILE, captions_text
from ..train import FamilyRunResult, TrainConfig, train
from ..train.datasets import TextTable, encode_caption_table
from .diffusion import RUN_MODEL_CONFIG, DiffusionObjective

#: source image channels (RGB in [-1, 1], pixel space)
SOURCE_CHANNELS = 3
#: loop settings for instruction runs (overridable from the command line)
DEFAULT_LOOP = dict(batch_size=32, learning_rate=2e-4, warmup_steps=50, decay="constant",
                    max_steps=20_000, ema_decay=0.999, checkpoint_every=100, log_every=10)


@dataclass(frozen=True)
class InstructConfig:
    """Condition dropout of instruction training and the sampling defaults it supports."""

    #: fraction of samples trained without the instruction only / the image only / both
    text_dropout: float = 0.05
    image_dropout: float = 0.05
    both_dropout: float = 0.05
    default_guidance: float = 3.0
    default_image_guidance: float = 1.5

    def __post_init__(self):
        for name in ("text_dropout", "image_dropout", "both_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"must lie in [0, 1), got {getattr(self, name)}", field=name)
        if self.text_dropout + self.image_dropout + self.both_dropout >= 1.0:
            raise ConfigError("the three dropout fractions must sum to less than 1",
                              field="text_dropout")
        for name in ("default_guidance", "default_image_guidance"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", field=name)


def is_instruct_config(config: dict) -> bool:
    """Whether a model config is an instruction model's (it reads a source image)."""
    source_channels = int(config.get("unet", {}).get("source_channels", 0))
    return bool(config.get("instruct")) and source_channels > 0


class InstructObjective(DiffusionObjective):
    """EDM loss on the after image given instruction and source, with the paper's dropout."""

    def __init__(self, text: TextTable, settings: InstructConfig):
        super().__init__(text, condition_dropout=0.0, latent=False)
        self.settings = settings

    def dropout_masks(self, batch_size: int, generator: torch.Generator,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(drop text, drop image) [B] bools: one uniform draw per sample picks text only,
        image only, both or neither, with the configured fractions."""
        s = self.settings
        u = torch.rand(batch_size, generator=generator, device=device)
        text_only = u < s.text_dropout
        image_only = (u >= s.text_dropout) & (u < s.text_dropout + s.image_dropout)
        both = (u >= s.text_dropout + s.image_dropout) & \
            (u < s.text_dropout + s.image_dropout + s.both_dropout)
        return text_only | both, image_only | both

    def __call__(self, denoiser: EDMDenoiser, batch, generator: torch.Generator):
        after, source, rows = batch
        device = after.device
        x0 = after.float() / 127.5 - 1
        source = source.float() / 127.5 - 1
        drop_text, drop_image = self.dropout_masks(len(x0), generator, device)
        rows = torch.where(drop_text, torch.full_like(rows, self.text.empty), rows)
        source = torch.where(drop_image[:, None, None, None], torch.zeros_like(source), source)
        sigma = denoiser.sample_training_sigmas(len(x0), generator, device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        states, mask = self.text.states.to(device)[rows], self.text.mask.to(device)[rows]
        loss = denoiser.loss(x0, noise, sigma, encoder_hidden_states=states,
                             encoder_attention_mask=mask, source=source)
        return loss.mean(), {"dropped_text": drop_text.float().mean().item(),
                             "dropped_image": drop_image.float().mean().item()}


def _load_uint8(path: Path, size: int, field: str) -> torch.Tensor:
    image = open_image(path, mode="RGB", field=field)
    if image.size != (size, size):
        raise DataError(f"{path.name} is {image.size[0]}x{image.size[1]}, the model makes "
                        f"{size}x{size} images", field=field,
                        fix=f"build the triples with --size {size}")
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_triples(data: Path, size: int, split: str = "train"
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """After and source images (uint8 [N, 3, size, size]) and instructions of one split."""
    records = read_triples(data, split)
    if not records:
        raise DataError(f"{data} has no {split} triples", field="data",
                        fix="build more with `imagesynth data shapes-edits --count N`")
    after = torch.stack([_load_uint8(data / r["file"], size, "data") for r in records])
    source = torch.stack([_load_uint8(data / r["source"], size, "data") for r in records])
    return after, source, [r["instruction"] for r in records]


def instruct_unet_config(base_unet: dict) -> dict:
    """The base UNet's config with the source image's input channels added (once)."""
    if int(base_unet.get("source_channels", 0)):
        return dict(base_unet)
    return {**base_unet, "in_channels": int(base_unet["in_channels"]) + SOURCE_CHANNELS,
            "source_channels": SOURCE_CHANNELS}


def train_instruct(model: str, data: str | Path, out: str | Path, overrides: dict | None = None,
                   settings: InstructConfig = InstructConfig(), stop_after: int | None = None,
                   show_progress: bool = True, text_encoder=None) -> FamilyRunResult:
    """Fine-tune diffusion model `model` into an instruction-editing model on triples `data`."""
    from ..diffusion.finetune import initialise_from
    from ..paths import cache_dir
    from ..text import CachedTextEncoder, load_text_encoder

    config = from_dict(TrainConfig, {**DEFAULT_LOOP, **(overrides or {})})
    started, out, data = time.perf_counter(), Path(out), Path(data)
    entry = Registry().get(str(model))
    base_config = entry.config()
    if base_config.get("family") != "diffusion":
        raise ConfigError(f"{model!r} is a {base_config.get('family')!r} model, not a diffusion "
                          "model", field="model", fix="start from a diffusion model (e.g. shapes)")
    if base_config.get("autoencoder"):
        raise ConfigError(f"{model!r} is a latent diffusion model; instruction editing reads the "
                          "source image in pixel space", field="model",
                          fix="start from a pixel-space model (e.g. shapes)")
    size = int(base_config["image_size"])
    after, source, instructions = load_triples(data, size)
    encoder = CachedTextEncoder(text_encoder or load_text_encoder(base_config["text_encoder"]),
                                db_path=cache_dir("text") / "embeddings.sqlite")
    distinct = sorted(set(instructions))
    text = encode_caption_table(encoder, distinct)
    rows = torch.tensor([text.index[i] for i in instructions], dtype=torch.long)

    unet = instruct_unet_config(base_config["unet"])
    network = build_unet(unet)
    init_info = initialise_from(network, str(model), text_encoder=base_config["text_encoder"],
                                image_size=size, channels=int(base_config["channels"]),
                                sample_size=int(base_config["sample_size"]),
                                autoencoder_sha256=None)
    diffusion = dict(base_config.get("diffusion", {}))
    denoiser = EDMDenoiser(network, sigma_data=float(base_config["sigma_data"]),
                           P_mean=float(diffusion.get("train_sigma_mean", -1.2)),
                           P_std=float(diffusion.get("train_sigma_std", 1.2)))
    diffusion["default_guidance"] = settings.default_guidance
    run_config = {**{k: v for k, v in base_config.items()
                     if k not in ("steps", "last_metrics", "figures", "train")},
                  "unet": unet, "diffusion": diffusion, "parameters": parameter_count(denoiser),
                  "data": data.name, "init_from": init_info, "train": to_dict(config),
                  "instruct": {**to_dict(settings), "source_channels": SOURCE_CHANNELS,
                               "base_model": init_info, "train_triples": len(after)}}
    out.mkdir(parents=True, exist_ok=True)
    # Written first so `imagesynth train export RUN` can turn a mid-run checkpoint into a model.
    atomic_write_text(out / RUN_MODEL_CONFIG, json.dumps(run_config, indent=2))
    atomic_write_text(out / CAPTIONS_FILE, captions_text(distinct))
    result = train(denoiser, torch.utils.data.TensorDataset(after, source, rows),
                   InstructObjective(text, settings), config, out, stop_after=stop_after,
                   show_progress=show_progress)
    final = result.ema if result.ema is not None else denoiser
    state = {k.removeprefix("network."): v.detach().contiguous()
             for k, v in final.state_dict().items()}
    model_dir = write_instruct_model(out / "model", state, run_config, result.step,
                                     result.last_metrics, out / "log.jsonl", distinct)
    return FamilyRunResult(model_dir, result.step, result.stopped, result.last_metrics,
                           time.perf_counter() - started)


def write_instruct_model(folder: Path, state: dict[str, torch.Tensor], run_config: dict,
                         steps: int, metrics: dict, log_path: Path,
                         instructions: list[str]) -> Path:
    """Write the model folder: weights, config.json, CARD.md with the measured training figures,
    captions.txt (the distinct training instructions), sums."""
    figures = training_figures(log_path)
    config = {**run_config, "steps": steps, "last_metrics": metrics, "figures": figures}
    train_config, instruct = run_config["train"], run_config["instruct"]
    base = instruct["base_model"]
    card = (f"# Instruction-editing model from `{base['spec']}`\n\n"
            f"InstructPix2Pix-style editing: the base model's UNet "
            f"({run_config['parameters'] / 1e6:.2f} M parameters) with "
            f"{instruct['source_channels']} source-image input channels (started at zero), "
            f"fine-tuned on `{run_config['data']}` ({instruct['train_triples']} train triples).\n\n"
            f"- base model weights SHA-256: `{base['sha256']}`\n"
            f"- training: {steps} steps of batch {train_config['batch_size']} "
            f"({steps * train_config['batch_size']} samples), learning rate "
            f"{train_config['learning_rate']}, EMA {train_config['ema_decay']}, "
            f"{train_config['precision']}; dropout: instruction {instruct['text_dropout']}, "
            f"image {instruct['image_dropout']}, both {instruct['both_dropout']}\n"
            + "".join(f"- {key.replace('_', ' ')}: {value:.4g}\n"
                      for key, value in figures.items())
            + f"- defaults: guidance {instruct['default_guidance']}, image guidance "
              f"{instruct['default_image_guidance']}\n"
            + "\nEdit with `imagesynth edit IMAGE \"make the circle blue\" --model FOLDER`; "
              "held-out figures: `python benchmarks/instruct_shapes.py` (docs/edit.md).\n")
    return write_model_folder(folder, state, config, card,
                              extra_text={CAPTIONS_FILE: captions_text(instructions)})
