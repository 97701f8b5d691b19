"""Personalise a trained diffusion model: LoRA fine-tuning and DreamBooth, on the shared loop.

Both start from a model folder's denoiser and train it with the diffusion family's own objective
(`DiffusionObjective`, the EDM loss) on the one training loop (resume, Rich progress, time
budget). LoRA freezes the UNet and trains peft adapters on its attention projections (or every
block layer), as diffusers' `train_text_to_image_lora.py` does, and writes a diffusers-format
LoRA file. DreamBooth follows diffusers' `train_dreambooth.py`: a few images of one subject
captioned "a <token> <class noun>", and with prior preservation the base model's own images of
the class prompt, loss = instance + prior_weight · class, so the class keeps its meaning.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import from_dict, to_dict
from ..data.folder import CaptionedImageFolder, IMAGE_SUFFIXES, pil_to_tensor, square_resize
from ..diffusion.lora import TARGETS, lora_state_dict, save_lora
from ..errors import ConfigError, DataError
from ..io.files import atomic_write_text
from ..io.images import open_image
from ..train import TrainConfig, train
from ..train.datasets import (caption_choice_table, caption_options, encode_caption_table,
                              images_as_uint8, to_uint8)
from .diffusion import DiffusionObjective, cached_latents, write_diffusion_model

LORA_FILE = "lora.safetensors"
MAX_RANK = 256
MIN_INSTANCE_IMAGES = 3
CLASS_IMAGES_DIR = "class_images"

#: loop settings of a fine-tuning run (tiny data: small batches, a few hundred steps, no EMA)
FINETUNE_LOOP = dict(batch_size=16, learning_rate=1e-3, warmup_steps=20, max_steps=300,
                     ema_decay=None, checkpoint_every=100, log_every=10)
#: full fine-tuning moves every weight: a far smaller step than the adapters take
FULL_LEARNING_RATE = 5e-5


@dataclass(frozen=True)
class LoraSettings:
    """The adapter: rank, alpha (scale alpha/rank; default = rank, i.e. 1) and target layers."""

    rank: int = 4
    alpha: float | None = None
    targets: str = "attn"

    def __post_init__(self):
        if not isinstance(self.rank, int) or not 1 <= self.rank <= MAX_RANK:
            raise ConfigError(f"must be an integer in [1, {MAX_RANK}], got {self.rank!r}",
                              field="rank", fix="4-16 is typical for small models")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"must be positive, got {self.alpha}", field="alpha",
                              fix="omit it to use the rank (scale 1)")
        if self.targets not in TARGETS:
            raise ConfigError(f"unknown targets {self.targets!r}", field="targets",
                              fix=f"choose one of: {', '.join(TARGETS)}")

    @property
    def lora_alpha(self) -> float:
        """Alpha used in the file and peft's config."""
        return float(self.alpha if self.alpha is not None else self.rank)


@dataclass(frozen=True)
class PersonaliseResult:
    """What a fine-tuning run wrote and how it ended."""

    output: Path  # the LoRA file or the model folder
    steps: int
    stopped: str
    metrics: dict
    seconds: float
    trainable_parameters: int
    notes: tuple[str, ...] = ()


def _base_pipeline(model: str, text_encoder=None):
    from ..pipeline import load_pipeline

    return load_pipeline(model, text_encoder=text_encoder)


def _training_samples(pipe, images_u8: torch.Tensor, out: Path) -> torch.Tensor:
    """Pixels, or the autoencoder's latents (cached in the run folder) for a latent model."""
    if pipe.autoencoder is None:
        return images_u8
    return cached_latents(pipe.autoencoder, pipe.config["autoencoder"]["sha256"], images_u8, out)


def add_lora_adapter(denoiser: torch.nn.Module, settings: LoraSettings, seed: int = 0) -> int:
    """Freeze the denoiser and give its UNet a trainable peft LoRA; return the trainable count."""
    from peft import LoraConfig

    from ..diffusion.lora import find_unet

    denoiser.requires_grad_(False)
    unet = find_unet(denoiser)
    with torch.random.fork_rng(devices=[]):  # seeded A init without touching the caller's RNG
        torch.manual_seed(seed)
        # diffusers' LoRA scripts: A gaussian, B zero, so training starts at the base model
        unet.add_adapter(LoraConfig(r=settings.rank, lora_alpha=settings.lora_alpha,
                                    init_lora_weights="gaussian",
                                    target_modules=list(TARGETS[settings.targets])))
    return sum(p.numel() for p in denoiser.parameters() if p.requires_grad)


class PairedTrainingSet(torch.utils.data.Dataset):
    """Instance samples, optionally paired with class samples (DreamBooth prior preservation)."""

    def __init__(self, samples, choices, class_samples=None, class_choices=None):
        self.samples, self.choices = samples, choices
        self.class_samples, self.class_choices = class_samples, class_choices

    def __len__(self) -> int:
        extra = len(self.class_samples) if self.class_samples is not None else 0
        return max(len(self.samples), extra)

    def __getitem__(self, index: int):
        i = index % len(self.samples)
        if self.class_samples is None:
            return self.samples[i], self.choices[i]
        j = index % len(self.class_samples)
        return self.samples[i], self.choices[i], self.class_samples[j], self.class_choices[j]


class PriorPreservationObjective:
    """diffusers' DreamBooth loss: EDM loss on the instance half + prior_weight · the class half."""

    def __init__(self, objective: DiffusionObjective, prior_weight: float):
        self.objective, self.prior_weight = objective, prior_weight

    def __call__(self, denoiser, batch, generator: torch.Generator):
        instance, metrics = self.objective(denoiser, (batch[0], batch[1]), generator)
        if len(batch) == 2:
            return instance, metrics
        prior, _ = self.objective(denoiser, (batch[2], batch[3]), generator)
        return instance + self.prior_weight * prior, {"instance_loss": instance.item(),
                                                      "prior_loss": prior.item()}


def _run(pipe, dataset, text, out: Path, loop: dict, lora: LoraSettings | None,
         condition_dropout: float, prior_weight: float, show_progress: bool, resume: bool,
         stop_after: int | None):
    """Train the pipeline's denoiser (adapters or all weights) on `dataset`; return loop result."""
    config = from_dict(TrainConfig, loop)
    denoiser = pipe.denoiser
    if lora is not None:
        trainable = add_lora_adapter(denoiser, lora, config.seed)
    else:
        denoiser.requires_grad_(True)
        trainable = sum(p.numel() for p in denoiser.parameters())
    objective = PriorPreservationObjective(
        DiffusionObjective(text, condition_dropout, pipe.autoencoder is not None), prior_weight)
    result = train(denoiser, dataset, objective, config, out, stop_after=stop_after,
                   show_progress=show_progress, resume=resume)
    return denoiser, result, trainable, config


def _write_lora(denoiser, out: Path, pipe, lora: LoraSettings, extra: dict) -> Path:
    from ..diffusion.lora import find_unet

    return save_lora(out / LORA_FILE, lora_state_dict(find_unet(denoiser)), rank=lora.rank,
                     alpha=lora.lora_alpha, targets=lora.targets, base_model=pipe.model_name,
                     base_model_hash=pipe.model_hash, extra=extra)


def finetune_lora(model: str, data: str | Path, out: str | Path, lora: LoraSettings = LoraSettings(),
                  overrides: dict | None = None, condition_dropout: float = 0.0,
                  show_progress: bool = True, resume: bool = True, text_encoder=None,
                  stop_after: int | None = None) -> PersonaliseResult:
    """Train a LoRA for `model` on a captioned folder; write `out/lora.safetensors`."""
    started, out = time.perf_counter(), Path(out)
    pipe = _base_pipeline(model, text_encoder)
    folder = CaptionedImageFolder(data, resolution=pipe.image_size)  # every image: tiny sets
    samples = _training_samples(pipe, images_as_uint8(folder), out)
    captions = sorted({c for item in folder.items for c in caption_options(item)})
    text = encode_caption_table(pipe.text_encoder, captions)
    dataset = PairedTrainingSet(samples, caption_choice_table(folder.items, text.index))
    loop = {**FINETUNE_LOOP, **(overrides or {})}
    denoiser, result, trainable, config = _run(pipe, dataset, text, out, loop, lora,
                                               condition_dropout, 0.0, show_progress, resume,
                                               stop_after)
    path = _write_lora(denoiser, out, pipe, lora, {
        "data": Path(data).name, "images": len(folder), "steps": result.step,
        "train": to_dict(config)})
    return PersonaliseResult(path, result.step, result.stopped, result.last_metrics,
                             time.perf_counter() - started, trainable)


# --- DreamBooth ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DreamBoothSettings:
    """The subject's token and class, and prior preservation (diffusers' train_dreambooth)."""

    token: str
    class_prompt: str
    prior_preservation: bool = False
    num_class_images: int = 100
    prior_weight: float = 1.0

    def __post_init__(self):
        if not self.token or not self.token.strip():
            raise ConfigError("the subject token is missing", field="token",
                              fix='pass a rare word, e.g. --token "sks"')
        if not re.fullmatch(r"[A-Za-z0-9]+", self.token):
            raise ConfigError(f"{self.token!r} is not one plain word", field="token",
                              fix='use letters and digits only, e.g. "sks"')
        if not class_noun(self.class_prompt):
            raise ConfigError("the class prompt is empty", field="class_prompt",
                              fix='name the subject\'s class, e.g. "a circle"')
        if not 1 <= self.num_class_images <= 10_000:
            raise ConfigError(f"must be in [1, 10000], got {self.num_class_images}",
                              field="num_class_images")
        if not self.prior_weight >= 0:
            raise ConfigError(f"must be >= 0, got {self.prior_weight}", field="prior_weight")

    @property
    def instance_prompt(self) -> str:
        """ "a <token> <class noun>", e.g. "a sks circle" from "a circle"."""
        return f"a {self.token} {class_noun(self.class_prompt)}"


def class_noun(class_prompt: str) -> str:
    """The class prompt without its article: "a circle" -> "circle"."""
    return re.sub(r"^(a|an|the)\s+", "", " ".join(class_prompt.lower().split()))


def check_token(token: str, pipe) -> list[str]:
    """Refuse a token the model's captions already use; warn when the tokenizer knows the word."""
    words = {w for caption in (pipe.captions or []) for w in caption.lower().split()}
    if token.lower() in words:
        raise ConfigError(f"{token!r} is already a word of the model's captions", field="token",
                          fix='pick a word the captions never use, e.g. "sks"')
    tokenizer = getattr(pipe.text_encoder, "tokenizer", None)  # the transformer encoders' own
    if tokenizer is not None and tokenizer.tokenize(token) == [token.lower()]:
        return [f"token {token!r} is a whole word of the text encoder's vocabulary: its prior "
                "meaning mixes into the subject (a rarer word avoids that)"]
    return []


def load_instance_images(images: str | Path, size: int) -> tuple[torch.Tensor, list[str]]:
    """The subject's images as uint8 [N,3,S,S]; other sizes are centre-cropped and resized."""
    root = Path(images)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder", field="images",
                        fix="pass the folder that holds the subject's images")
    files = sorted(p for p in root.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if len(files) < MIN_INSTANCE_IMAGES:
        raise DataError(f"{root} has {len(files)} images, DreamBooth needs at least "
                        f"{MIN_INSTANCE_IMAGES}", field="images",
                        fix="add 3-10 images of the subject in varied positions")
    tensors, notes = [], []
    resized = 0
    for path in files:
        image = open_image(path, mode="RGB", field="images")
        if image.size != (size, size):
            resized += 1
            image = square_resize(image, size)
        tensors.append(to_uint8(pil_to_tensor(image)))
    if resized:
        notes.append(f"{resized} of {len(files)} images were centre-cropped and resized to "
                     f"{size}x{size}, the model's size")
    return torch.stack(tensors), notes


def class_images(pipe, prompt: str, count: int, out: Path, batch: int = 8) -> torch.Tensor:
    """The base model's images of the class prompt, seeds 0..count-1, cached in the run folder."""
    folder = out / CLASS_IMAGES_DIR
    manifest = {"prompt": prompt, "count": count, "model_hash": pipe.model_hash}
    manifest_path = folder / "manifest.json"
    files = [folder / f"{seed:05d}.png" for seed in range(count)]
    if not (manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest
            and all(f.is_file() for f in files)):
        folder.mkdir(parents=True, exist_ok=True)
        for start in range(0, count, batch):
            seeds = list(range(start, min(count, start + batch)))
            for seed, image in zip(seeds, pipe(prompt, seed=seeds).images):
                image.save(files[seed])
        atomic_write_text(manifest_path, json.dumps(manifest))
    return torch.stack([to_uint8(pil_to_tensor(open_image(f, mode="RGB"))) for f in files])


def finetune_dreambooth(model: str, images: str | Path, out: str | Path,
                        settings: DreamBoothSettings, lora: LoraSettings | None = None,
                        overrides: dict | None = None, show_progress: bool = True,
                        resume: bool = True, text_encoder=None,
                        stop_after: int | None = None) -> PersonaliseResult:
    """Teach `model` a subject from a few images; a LoRA file (`lora`) or a full model folder."""
    started, out = time.perf_counter(), Path(out)
    pipe = _base_pipeline(model, text_encoder)
    notes = check_token(settings.token, pipe)
    instance_u8, resize_notes = load_instance_images(images, pipe.image_size)
    notes += resize_notes
    prompts = [settings.instance_prompt, settings.class_prompt]
    text = encode_caption_table(pipe.text_encoder, prompts)
    instance_rows = torch.full((len(instance_u8), 1), text.index[settings.instance_prompt])
    class_samples = class_rows = None
    if settings.prior_preservation:
        class_u8 = class_images(pipe, settings.class_prompt, settings.num_class_images, out)
        class_samples = _training_samples(pipe, class_u8, out / "class_latents")
        class_rows = torch.full((len(class_u8), 1), text.index[settings.class_prompt])
    dataset = PairedTrainingSet(_training_samples(pipe, instance_u8, out), instance_rows,
                                class_samples, class_rows)
    loop = {**FINETUNE_LOOP, "batch_size": 4, "max_steps": 400,
            **({} if lora is not None else {"learning_rate": FULL_LEARNING_RATE}),
            **(overrides or {})}
    denoiser, result, trainable, config = _run(
        pipe, dataset, text, out, loop, lora, 0.0,
        settings.prior_weight if settings.prior_preservation else 0.0, show_progress, resume,
        stop_after)
    info = {"dreambooth": {**dataclasses.asdict(settings),
                           "instance_prompt": settings.instance_prompt,
                           "images": len(instance_u8)}, "steps": result.step,
            "train": to_dict(config)}
    if lora is not None:
        path = _write_lora(denoiser, out, pipe, lora, info)
    else:
        state = {k.removeprefix("network."): v for k, v in denoiser.state_dict().items()}
        base_config = {**pipe.config, **info, "data": Path(images).name,
                       "init_from": {"spec": pipe.model_name, "sha256": pipe.model_hash}}
        path = write_diffusion_model(out / "model", state, base_config, result.step,
                                     result.last_metrics, pipe.captions)
    return PersonaliseResult(path, result.step, result.stopped, result.last_metrics,
                             time.perf_counter() - started, trainable, tuple(notes))


def fuse_lora_model(model: str, loras: list[tuple[str | Path, float]], out: str | Path,
                    text_encoder=None) -> Path:
    """Write a model folder whose weights include the LoRAs (no adapters needed to use it)."""
    from ..diffusion.lora import fuse_loras, lora_recipe, read_lora

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already exists and is not empty", field="out",
                          fix="pick a new folder")
    pipe = _base_pipeline(model, text_encoder)
    loaded = [(read_lora(path), float(weight)) for path, weight in loras]
    fused = fuse_loras(pipe.denoiser, loaded, pipe.model_hash)
    state = {k.removeprefix("network."): v for k, v in fused.state_dict().items()}
    config = {**pipe.config, "init_from": {"spec": pipe.model_name, "sha256": pipe.model_hash},
              "fused_loras": lora_recipe(loaded)}
    return write_diffusion_model(out, state, config, int(pipe.config.get("steps", 0)),
                                 dict(pipe.config.get("last_metrics") or {}), pipe.captions)


def lora_size(path: str | Path) -> dict[str, Any]:
    """Bytes and tensor count of a LoRA file (for reports)."""
    from ..diffusion.lora import read_lora

    lora = read_lora(path)
    return {"bytes": Path(path).stat().st_size, "modules": len(lora.modules),
            "parameters": sum(t.numel() for t in lora.tensors.values())}
