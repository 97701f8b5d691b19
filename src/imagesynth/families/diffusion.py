"""Train a text-conditioned EDM diffusion model on any captioned folder with the shared loop.

Recipe: diffusers `UNet2DConditionModel` (named presets) inside `EDMDenoiser`, cross-attention on
the text encoder's token states (computed once per distinct caption and cached on disk), the EDM
loss, and condition dropout for classifier-free guidance. The unconditional branch is the text
encoder's encoding of the empty caption "" (not a zero tensor), so at sampling time an empty
negative prompt is exactly the branch the model was trained with. In latent mode the data set is
encoded once with the autoencoder (posterior mean, already scaled) and the latents are cached.
`DiffusionFamily` puts a trained model behind the family interface, so `sample`, `interpolate`
and `compare` treat it like any other generator; the engine (denoisers, samplers, guidance)
stays in `diffusion/`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..config import from_dict, to_dict
from ..data.folder import CaptionedImageFolder
from ..errors import ConfigError, DataError
from ..io.checkpoint import load_weights, save_weights
from ..io.files import atomic_write_text
from ..nets.unet import build_unet, parameter_count, unet_config
from ..paths import cache_dir
from ..registry import write_model_folder
from ..text.expand import CAPTIONS_FILE, captions_text, read_captions, write_captions
from ..text import CachedTextEncoder, load_text_encoder
from ..train import (BatchRandom, FamilyRunResult, TrainConfig, is_main_process, shard_aware,
                     train)
from ..train.distributed import check_batch_split
from ..diffusion.denoisers import EDMDenoiser
from ..train.datasets import (CaptionedTrainingSet, TextTable, caption_choice_table, caption_options,
                              encode_caption_table, images_as_uint8, save_grid_png)


@dataclass(frozen=True)
class DiffusionConfig:
    """What defines a diffusion model beyond its UNet: data space, text encoder and EDM settings."""

    preset: str = "shapes"
    image_size: int = 32
    text_encoder: str = "minilm"
    sigma_data: float = 0.5
    condition_dropout: float = 0.1
    autoencoder: str | None = None
    default_steps: int = 20
    default_sampler: str = "dpmpp_2m"
    default_guidance: float = 3.0
    #: training noise levels: ln(sigma) ~ N(train_sigma_mean, train_sigma_std^2), EDM's P_mean/P_std
    train_sigma_mean: float = -1.2
    train_sigma_std: float = 1.2

    def __post_init__(self):
        if self.image_size < 8:
            raise ConfigError("must be at least 8", field="image_size")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ConfigError("must be in [0, 1)", field="condition_dropout")
        if not self.sigma_data > 0:
            raise ConfigError("must be positive", field="sigma_data")
        if not self.train_sigma_std > 0:
            raise ConfigError("must be positive", field="train_sigma_std")


#: preset -> (model settings, loop settings); the UNet comes from nets.unet.PRESETS of that name
PRESETS: dict[str, tuple[DiffusionConfig, dict]] = {
    "tiny": (DiffusionConfig(preset="tiny", image_size=16, default_steps=8),
             dict(batch_size=16, learning_rate=1e-3, warmup_steps=5, max_steps=40,
                  ema_decay=0.9)),
    "shapes": (DiffusionConfig(preset="shapes", image_size=32),
               dict(batch_size=64, learning_rate=4e-4, warmup_steps=500, max_steps=100_000,
                    ema_decay=0.9995, sample_every=1000, checkpoint_every=500)),
    # The bundled `shapes` recipe. Held-out relation prompts passed: plain MiniLM states 0.06,
    # minilm+words 0.79, and 0.98 with still more practice at high noise, where layout is decided
    # (ln sigma ~ N(-0.4, 1.6^2) -> N(0.4, 1.6^2); EDM's default puts ~1 % of steps above 5).
    "shapes-xy": (DiffusionConfig(preset="shapes-xy", image_size=32, text_encoder="minilm+words",
                                  train_sigma_mean=0.4, train_sigma_std=1.6),
                  dict(batch_size=128, learning_rate=4e-4, warmup_steps=500, max_steps=10_000,
                       ema_decay=0.9995, sample_every=1000, checkpoint_every=500)),
    "emoji": (DiffusionConfig(preset="emoji", image_size=64, sigma_data=1.0),
              dict(batch_size=64, learning_rate=3e-4, warmup_steps=500, max_steps=100_000,
                   ema_decay=0.9995, sample_every=1000, checkpoint_every=500)),
}


class DiffusionObjective:
    """EDM loss with a random caption per image and condition dropout to the "" embedding."""

    def __init__(self, text: TextTable, condition_dropout: float, latent: bool):
        self.text, self.condition_dropout, self.latent = text, condition_dropout, latent

    @shard_aware
    def __call__(self, denoiser: EDMDenoiser, batch, generator: torch.Generator | BatchRandom):
        samples, choices = batch[0], batch[1]
        device = samples.device
        # every draw is per sample, made for the global batch (this shard keeps its rows)
        rng = BatchRandom.of(generator, len(samples))
        x0 = samples.float() if self.latent else samples.float() / 127.5 - 1
        counts = (choices >= 0).sum(dim=1)
        pick = (rng.rand(device=device) * counts).long()
        rows = choices.gather(1, pick[:, None]).squeeze(1)
        dropped = rng.rand(device=device) < self.condition_dropout
        rows = torch.where(dropped, torch.full_like(rows, self.text.empty), rows)
        states = self.text.states.to(device)[rows]
        mask = self.text.mask.to(device)[rows]
        sigma = rng.draw(lambda g, n: denoiser.sample_training_sigmas(n, g, device))
        noise = rng.randn(*x0.shape[1:], device=device)
        loss = denoiser.loss(x0, noise, sigma, encoder_hidden_states=states,
                             encoder_attention_mask=mask, **self.extra_condition(batch))
        return loss.mean(), {"dropped": dropped.float().mean().item()}

    def extra_condition(self, batch) -> dict[str, Any]:
        """More keyword arguments for the denoiser from the batch: none here (ControlNet adds
        its condition maps)."""
        return {}


@torch.no_grad()
def encode_latents(autoencoder: nn.Module, images_u8: torch.Tensor,
                   batch_size: int = 64) -> torch.Tensor:
    """Scaled posterior-mean latents of uint8 images, in batches."""
    autoencoder.eval()
    device = next(autoencoder.parameters(), torch.empty(0)).device
    chunks = [autoencoder.encode(images_u8[i:i + batch_size].to(device).float() / 127.5 - 1).cpu()
              for i in range(0, len(images_u8), batch_size)]
    return torch.cat(chunks)


def cached_latents(autoencoder: nn.Module, autoencoder_hash: str, images_u8: torch.Tensor,
                   run_dir: Path) -> torch.Tensor:
    """Encode the data set once per (autoencoder, data) and keep the latents in the run folder."""
    path = run_dir / f"latents-{autoencoder_hash[:16]}.safetensors"
    if path.is_file():
        tensors = load_weights(path)
        if tensors["latents"].shape[0] == images_u8.shape[0]:
            return tensors["latents"]
    latents = encode_latents(autoencoder, images_u8)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(path, {"latents": latents.contiguous()}, config={"autoencoder": autoencoder_hash})
    return latents


def sample_grid(denoiser: EDMDenoiser, text: TextTable, prompts: list[str], shape: tuple[int, ...],
                decode, num_steps: int = 20, guidance_scale: float = 3.0) -> torch.Tensor:
    """Images [N,3,H,W] in [0,1] for `prompts` (seed = prompt index), for progress grids."""
    from ..diffusion.guidance import ClassifierFreeGuidance
    from ..diffusion.noise import initial_noise
    from ..diffusion.samplers import sample_dpmpp_2m
    from ..diffusion.schedules import karras_sigmas

    device = next(denoiser.parameters()).device
    rows = torch.tensor([text.index[p] for p in prompts])
    cond = {"encoder_hidden_states": text.states[rows].to(device),
            "encoder_attention_mask": text.mask[rows].to(device)}
    empty = torch.full_like(rows, text.empty)
    uncond = {"encoder_hidden_states": text.states[empty].to(device),
              "encoder_attention_mask": text.mask[empty].to(device)}
    sigmas = karras_sigmas(num_steps, 0.002, 80.0)
    x, _ = initial_noise(shape, list(range(len(prompts))), float(sigmas[0]), device=device)
    guided = ClassifierFreeGuidance(denoiser, cond, uncond, guidance_scale)
    with torch.no_grad():
        images = decode(sample_dpmpp_2m(guided, x, sigmas))
    return ((images.clamp(-1, 1) + 1) / 2).cpu()


def train_diffusion(data: str | Path, out: str | Path, preset: str = "shapes",
                    overrides: dict | None = None, model_overrides: dict | None = None,
                    autoencoder: str | nn.Module | None = None, autoencoder_hash: str | None = None,
                    sample_prompts: list[str] | None = None, stop_after: int | None = None,
                    show_progress: bool = True, resume: bool = True,
                    text_encoder=None, init_from: str | None = None) -> FamilyRunResult:
    """Train a text-to-image diffusion model on `data` into `out`; write `out/model/` at the end.

    `autoencoder` (a registry name/path, or a loaded module with `autoencoder_hash` for tests)
    switches to latent diffusion (the UNet takes the latents' channels and size).
    `text_encoder` reuses an already loaded encoder named like the config's `text_encoder`.
    `init_from` (a diffusion model name/path) starts from its weights instead of random ones.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}", field="preset",
                          fix=f"choose one of: {', '.join(PRESETS)}")
    model_config, loop = PRESETS[preset]
    model_config = dataclasses.replace(model_config, **(model_overrides or {}))
    config = from_dict(TrainConfig, {**loop, **(overrides or {})})
    check_batch_split(config.batch_size, config.grad_accum)  # before the data and text encoder
    started, out = time.perf_counter(), Path(out)

    folder = CaptionedImageFolder(data, resolution=model_config.image_size, split="train")
    images_u8 = images_as_uint8(folder)
    captions = sorted({c for item in folder.items for c in caption_options(item)})
    encoder = CachedTextEncoder(text_encoder or load_text_encoder(model_config.text_encoder),
                                db_path=cache_dir("text") / "embeddings.sqlite")
    text = encode_caption_table(encoder, captions)
    choices = caption_choice_table(folder.items, text.index)

    latent_info: dict[str, Any] | None = None
    decode = lambda x: x  # noqa: E731 - pixel space: samples are images
    if autoencoder is not None:
        if isinstance(autoencoder, str):
            spec = autoencoder
            from ..pipeline import load_autoencoder_spec

            autoencoder, autoencoder_hash = load_autoencoder_spec(spec)
        else:
            spec = getattr(autoencoder, "spec", None)
            if autoencoder_hash is None:
                raise ConfigError("a loaded autoencoder needs its weights hash",
                                  field="autoencoder_hash")
        if getattr(autoencoder, "fixed_image_size", None) is not None:
            raise ConfigError("a vector VAE has no latent grid for a UNet to denoise",
                              field="autoencoder",
                              fix="pass a grid autoencoder (e.g. shapes-f4), or none")
        samples = cached_latents(autoencoder, autoencoder_hash, images_u8, out)
        latent_info = {"spec": spec, "sha256": autoencoder_hash,
                       "latent_channels": int(autoencoder.latent_channels),
                       "downsample_factor": int(autoencoder.downsample_factor),
                       "latent_std": float(samples.std())}
        # Progress grids sample on the UNet's device (CUDA when present); the decoder follows it.
        decode = lambda z: autoencoder.to(z.device).decode(z)  # noqa: E731
    else:
        samples = images_u8
    unet_settings = unet_config(model_config.preset, encoder.state_dim,
                                sample_size=samples.shape[-1], channels=samples.shape[1])

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        network = build_unet(unet_settings)
    init_info = None
    if init_from is not None:
        from ..diffusion.finetune import initialise_from

        init_info = initialise_from(
            network, init_from, text_encoder=model_config.text_encoder,
            image_size=model_config.image_size, channels=int(samples.shape[1]),
            sample_size=int(samples.shape[-1]),
            autoencoder_sha256=latent_info["sha256"] if latent_info else None)
    denoiser = EDMDenoiser(network, sigma_data=model_config.sigma_data,
                           P_mean=model_config.train_sigma_mean, P_std=model_config.train_sigma_std)
    objective = DiffusionObjective(text, model_config.condition_dropout, latent_info is not None)
    prompts = [p for p in (sample_prompts or captions[:8]) if p in text.index][:16]
    if not prompts:
        prompts = captions[:8]

    def on_sample(step: int, model: EDMDenoiser, run_dir: Path) -> None:
        images = sample_grid(model, text, prompts, tuple(samples.shape[1:]), decode)
        save_grid_png(images, run_dir / "samples" / f"step-{step:07d}.png")

    base_config = {"family": "diffusion", "diffusion": to_dict(model_config),
                   "unet": unet_settings, "parameters": parameter_count(denoiser),
                   "sigma_data": model_config.sigma_data, "text_encoder": model_config.text_encoder,
                   "image_size": model_config.image_size, "channels": samples.shape[1],
                   "sample_size": samples.shape[-1], "autoencoder": latent_info,
                   "train": to_dict(config), "data": Path(data).name, "preset": preset,
                   "init_from": init_info}
    # Written before training so a mid-run checkpoint can be exported as a model (export_checkpoint).
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / RUN_MODEL_CONFIG, json.dumps(base_config, indent=2))
        write_captions(out, captions)  # the model folder carries them for `generate --expand`
    result = train(denoiser, CaptionedTrainingSet(samples, choices), objective, config, out,
                   on_sample=on_sample, stop_after=stop_after, show_progress=show_progress,
                   resume=resume)
    if not is_main_process():  # under torchrun rank 0 writes the model folder
        return FamilyRunResult(out / "model", result.step, result.stopped, result.last_metrics,
                               time.perf_counter() - started)
    final = result.ema if result.ema is not None else denoiser
    network_state = {k.removeprefix("network."): v for k, v in final.state_dict().items()}
    model_dir = write_diffusion_model(out / "model", network_state, base_config, result.step,
                                      result.last_metrics, read_captions(out))
    return FamilyRunResult(model_dir, result.step, result.stopped, result.last_metrics,
                           time.perf_counter() - started)


#: the model config of a diffusion run (without step count), kept in the run folder
RUN_MODEL_CONFIG = "model_config.json"


def write_diffusion_model(folder: Path, network_state: dict[str, torch.Tensor], base_config: dict,
                          steps: int, metrics: dict, captions: list[str] | None = None) -> Path:
    """Write a diffusion model folder (weights, config with step count and metrics, card,
    the distinct training captions)."""
    full_config = {**base_config, "steps": steps, "last_metrics": metrics}
    train_config = base_config["train"]
    card = (f"# Diffusion model trained on {base_config['data']}\n\n"
            f"Preset `{base_config.get('preset', base_config['diffusion']['preset'])}` "
            f"({base_config['parameters'] / 1e6:.2f} M parameters), "
            f"{steps} steps of batch {train_config['batch_size']}, "
            f"{'latent' if base_config['autoencoder'] else 'pixel'} space, "
            f"{base_config['image_size']} px.\n\n"
            f"Last logged metrics: `{json.dumps(metrics)}`\n")
    extra = {CAPTIONS_FILE: captions_text(captions)} if captions else None
    return write_model_folder(folder, network_state, full_config, card, extra_text=extra)


def export_checkpoint(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, int]:
    """Write the newest checkpoint of a diffusion run (EMA weights) as a model folder.

    Lets a user sample from a model while it is still training; returns (folder, step).
    """
    from ..train.state import checkpoint_dirs

    run_dir = Path(run_dir)
    config_path = run_dir / RUN_MODEL_CONFIG
    if not config_path.is_file():
        raise DataError(f"{run_dir} is not a diffusion run folder (no {RUN_MODEL_CONFIG})",
                        field="run", fix="pass the --out folder of `imagesynth train diffusion`")
    checkpoints = checkpoint_dirs(run_dir / "checkpoints")
    if not checkpoints:
        raise DataError(f"{run_dir} has no complete checkpoint yet", field="run",
                        fix="wait for the first checkpoint (every checkpoint_every steps)")
    newest = checkpoints[-1]
    weights = newest / "ema.safetensors"
    if not weights.is_file():
        weights = newest / "model.safetensors"
    state = load_weights(weights)
    network_state = {k.removeprefix("network."): v for k, v in state.items()}
    step = int(json.loads((newest / "state.json").read_text())["step"])
    folder = Path(out) if out is not None else run_dir / f"model-step-{step}"
    return write_diffusion_model(folder, network_state, json.loads(config_path.read_text()), step,
                                 {}, read_captions(run_dir)), step


FAMILY = "diffusion"


class DiffusionFamily:
    """A loaded `DiffusionPipeline` as a generator: condition = one prompt per sample."""

    family = FAMILY
    has_latent = False

    def __init__(self, pipe):
        self.pipe = pipe
        self.image_size = pipe.image_size

    @classmethod
    def load(cls, spec: str, device: str | torch.device = "cpu") -> "DiffusionFamily":
        """Load by registry name or folder."""
        from ..pipeline import load_pipeline

        return cls(load_pipeline(spec, device=device))

    def sample(self, n: int, generators: Sequence[torch.Generator],
               condition: Sequence[str] | None = None, guidance: float | None = None,
               steps: int | None = None, sampler: str | None = None) -> torch.Tensor:
        """`n` images [n, 3, S, S] in [-1, 1] for prompts `condition`, one seeded run each."""
        # The pipeline seeds its own per-image generators; each given generator's seed is the
        # same seed, so image i still depends only on generators[i].
        seeds = [g.initial_seed() for g in generators]
        result = self.pipe(list(condition or [""] * n), seed=seeds, num_steps=steps,
                           sampler=sampler, guidance_scale=guidance)
        arrays = np.stack([np.asarray(image, dtype=np.float32) for image in result.images])
        return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1
