"""Train a ControlNet on a trained diffusion model with the shared loop, and load one back.

The base model's denoiser is frozen; only the ControlNet (diffusers' `ControlNetModel.from_unet`
copy of its encoder, joined through zero convolutions) trains, on the diffusion objective of
`families/diffusion.py` with the condition map as one more input. The condition of each
training image comes from the data folder (`conditions` in captions.jsonl, written by
`imagesynth data shapes --with-conditions`); scribbles are drawn from the images themselves.
Each image is trained with its primary caption only: a layout's colour code names the objects in
that caption's order. The model folder (family "controlnet") records the base model's weights
hash, so a ControlNet is never applied to a model it was not trained for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import from_dict, to_dict
from ..diffusion.denoisers import EDMDenoiser
from ..data.conditions import check_condition, scribble_map
from ..data.folder import CaptionedImageFolder
from .common import training_figures
from ..errors import ConfigError, DataError
from ..io.files import atomic_write_text
from ..io.images import open_image
from ..nets.controlnet import build_controlnet, controlnet_config, controlnet_from_config
from ..nets.unet import parameter_count
from ..registry import Registry, write_model_folder
from ..train import FamilyRunResult, TrainConfig, train
from ..train.datasets import encode_caption_table, images_as_uint8
from .diffusion import DiffusionObjective, cached_latents

FAMILY = "controlnet"
#: loop settings for ControlNet runs (overridable from the command line)
DEFAULT_LOOP = dict(batch_size=32, learning_rate=2e-4, warmup_steps=100, decay="constant",
                    max_steps=20_000, ema_decay=0.995, checkpoint_every=200, log_every=10)


class ControlNetTraining(nn.Module):
    """A frozen EDM denoiser plus one trainable ControlNet, as one denoiser for the objective."""

    def __init__(self, base: nn.Module, controlnet: nn.Module):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.controlnet = controlnet

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, control_image: torch.Tensor,
                **cond: Any) -> torch.Tensor:
        """Controlled denoised estimate at full control scale (the wrapper sampling uses)."""
        from ..diffusion.control import Control, ControlledDenoiser

        return ControlledDenoiser(self.base, [Control(self.controlnet, control_image)])(
            x, sigma, **cond)

    def sample_training_sigmas(self, *args, **kwargs) -> torch.Tensor:
        """The base model's training noise levels."""
        return self.base.sample_training_sigmas(*args, **kwargs)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """The base model's EDM loss weight."""
        return self.base.loss_weight(sigma)

    #: the EDM loss with this module as D: the same code the base model was trained with
    loss = EDMDenoiser.loss


class ControlNetObjective(DiffusionObjective):
    """The diffusion objective with the batch's condition maps as the ControlNet's input."""

    def extra_condition(self, batch) -> dict[str, Any]:
        """Condition maps uint8 -> [0, 1] floats."""
        return {"control_image": batch[2].float() / 255.0}


def read_records(data: Path) -> dict[str, dict]:
    """captions.jsonl records by file."""
    path = data / "captions.jsonl"
    if not path.is_file():
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[record.get("file") or record.get("file_name")] = record
    return records


def condition_maps(folder: CaptionedImageFolder, condition: str, size: int) -> torch.Tensor:
    """uint8 maps [N, 3, size, size] of the folder's items for `condition`."""
    from PIL import Image

    records = read_records(folder.root)
    maps = []
    for index, item in enumerate(folder.items):
        if condition == "scribble":
            image = scribble_map(folder.load_image(index))
        else:
            relative = (records.get(item.file, {}).get("conditions") or {}).get(condition)
            if relative is None:
                raise DataError(f"{item.file} has no {condition} map in captions.jsonl",
                                field="condition",
                                fix="build the data with `imagesynth data shapes "
                                    "--with-conditions`")
            image = open_image(folder.root / relative, mode="RGB", field="condition")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.NEAREST)
        maps.append(torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()))
    return torch.stack(maps).permute(0, 3, 1, 2).contiguous()


def train_controlnet(model: str, data: str | Path, condition: str, out: str | Path,
                     overrides: dict | None = None, stop_after: int | None = None,
                     show_progress: bool = True, text_encoder=None) -> FamilyRunResult:
    """Train a ControlNet for diffusion model `model` on `data` with maps of `condition`."""
    from ..pipeline import load_autoencoder_spec, load_denoiser
    from ..text import CachedTextEncoder, load_text_encoder
    from ..paths import cache_dir

    check_condition(condition)
    config = from_dict(TrainConfig, {**DEFAULT_LOOP, **(overrides or {})})
    started, out, data = time.perf_counter(), Path(out), Path(data)
    registry = Registry()
    entry = registry.get(str(model))
    base_config = entry.config()
    if base_config.get("family") != "diffusion":
        raise ConfigError(f"{model!r} is a {base_config.get('family')!r} model, not a diffusion "
                          "model", field="model", fix="pick a diffusion model (e.g. shapes)")
    base = load_denoiser(registry.load_state_dict(entry), base_config)
    settings = base_config.get("diffusion", {})
    base.P_mean = float(settings.get("train_sigma_mean", base.P_mean))
    base.P_std = float(settings.get("train_sigma_std", base.P_std))
    image_size, sample_size = int(base_config["image_size"]), int(base_config["sample_size"])

    folder = CaptionedImageFolder(data, resolution=image_size, split="train")
    images_u8 = images_as_uint8(folder)
    maps = condition_maps(folder, condition, image_size)
    latent = base_config.get("autoencoder")
    samples = images_u8
    if latent:
        autoencoder, digest = load_autoencoder_spec(latent["spec"])
        samples = cached_latents(autoencoder, digest, images_u8, out)
    encoder = CachedTextEncoder(text_encoder or load_text_encoder(base_config["text_encoder"]),
                                db_path=cache_dir("text") / "embeddings.sqlite")
    captions = [item.caption for item in folder.items]
    text = encode_caption_table(encoder, sorted(set(captions)))
    choices = torch.tensor([[text.index[c]] for c in captions], dtype=torch.long)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        controlnet = build_controlnet(base.network, image_size // sample_size)
    trainee = ControlNetTraining(base, controlnet)
    objective = ControlNetObjective(text, float(settings.get("condition_dropout", 0.1)),
                                    latent=bool(latent))
    run_config = {"family": FAMILY, "condition": condition,
                  "controlnet": controlnet_config(controlnet),
                  "base_model": {"spec": entry.name if entry.source != "path" else str(entry.root),
                                 "sha256": entry.weights_sha256},
                  "image_size": image_size, "sample_size": sample_size,
                  "downsample_factor": image_size // sample_size,
                  "text_encoder": base_config["text_encoder"],
                  "parameters": parameter_count(controlnet), "data": data.name,
                  "train_images": len(folder), "train": to_dict(config)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "controlnet_config.json", json.dumps(run_config, indent=2))
    dataset = torch.utils.data.TensorDataset(samples, choices, maps)  # rows: sample, caption, map
    result = train(trainee, dataset, objective, config, out, stop_after=stop_after,
                   show_progress=show_progress)
    final = result.ema if result.ema is not None else trainee
    state = {k.removeprefix("controlnet."): v.detach().contiguous()
             for k, v in final.state_dict().items() if k.startswith("controlnet.")}
    seconds = time.perf_counter() - started
    model_dir = write_controlnet_model(out / "model", state, run_config, result.step,
                                       result.last_metrics, out / "log.jsonl")
    return FamilyRunResult(model_dir, result.step, result.stopped, result.last_metrics, seconds)


def write_controlnet_model(folder: Path, state: dict[str, torch.Tensor], run_config: dict,
                           steps: int, metrics: dict, log_path: Path) -> Path:
    """Write a ControlNet model folder: weights, config.json, CARD.md (measured figures), sums."""
    figures = training_figures(log_path)
    config = {**run_config, "steps": steps, "last_metrics": metrics, "figures": figures}
    train_config, base = run_config["train"], run_config["base_model"]
    card = (f"# ControlNet ({run_config['condition']}) for `{base['spec']}`\n\n"
            f"A ControlNet ({run_config['parameters'] / 1e6:.2f} M parameters) copied from the "
            f"base model's UNet encoder, trained on `{run_config['data']}` "
            f"({run_config['train_images']} images) with `{run_config['condition']}` maps.\n\n"
            f"- base model weights SHA-256: `{base['sha256']}`\n"
            f"- training: {steps} steps of batch {train_config['batch_size']} "
            f"({steps * train_config['batch_size']} samples), learning rate "
            f"{train_config['learning_rate']}, EMA {train_config['ema_decay']}, "
            f"{train_config['precision']}\n"
            + "".join(f"- {key.replace('_', ' ')}: {value:.4g}\n"
                      for key, value in figures.items())
            + "\nHeld-out figures: `python benchmarks/control_shapes.py` (see docs/control.md).\n")
    return write_model_folder(folder, state, config, card)


def load_controlnet(spec: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict, str]:
    """Load a ControlNet model folder (registry name or path): (network, config, weights hash)."""
    registry = Registry()
    entry = registry.get(str(spec))
    config = entry.config()
    if config.get("family") != FAMILY:
        raise ConfigError(f"{spec!r} is a {config.get('family')!r} model, not a ControlNet",
                          field="control_model",
                          fix="pass the model folder `imagesynth train controlnet` wrote")
    network = controlnet_from_config(config["controlnet"])
    state = {k: v.float() for k, v in registry.load_state_dict(entry).items()}
    network.load_state_dict(state)
    return network.to(device).eval(), config, entry.weights_sha256 or ""


@dataclass(frozen=True)
class ControlInput:
    """One control of a generation: condition map (path, bytes or PIL), ControlNet, scale, window."""

    image: Any
    model: str
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


def controlled_denoiser(denoiser, controls: Sequence[ControlInput], schedule: torch.Tensor, *,
                        model_hash: str, image_size: int, device: torch.device | str = "cpu",
                        cache: dict | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """`denoiser` under `controls` (a `ControlledDenoiser`) and the recipe entry of each control.

    Refuses a ControlNet trained for other base weights, a map of the wrong size and a bad
    scale or window, each in one line naming the field.
    """
    from ..diffusion.control import Control, ControlledDenoiser, check_control_settings, \
        control_image_tensor
    from ..pipeline import _read_input_image

    cache = {} if cache is None else cache
    built, entries = [], []
    for control in controls:
        check_control_settings(control.scale, control.start, control.end)
        if control.model not in cache:
            cache[control.model] = load_controlnet(control.model, device)
        network, config, weights_hash = cache[control.model]
        base = config.get("base_model", {})
        if base.get("sha256") != model_hash:
            raise ConfigError(f"{control.model!r} was trained for base model "
                              f"{base.get('spec')!r} (weights {str(base.get('sha256'))[:12]}), "
                              f"not this one (weights {model_hash[:12]})", field="control_model",
                              fix="use a ControlNet trained on this model (`imagesynth train "
                                  "controlnet --model ...`)")
        image, image_hash = _read_input_image(control.image, "RGB", "control_image")
        tensor = control_image_tensor(image, image_size).to(device)
        built.append(Control(network, tensor, control.scale, control.start, control.end))
        entries.append({"image_hash": image_hash, "model": _model_reference(control.model),
                        "model_hash": weights_hash, "condition": config.get("condition"),
                        "scale": control.scale, "start": control.start, "end": control.end})
    return ControlledDenoiser(denoiser, built, schedule), entries


def _model_reference(spec: str) -> str:
    """A registry name as given; a folder resolved, so `reproduce` finds it from anywhere."""
    path = Path(spec)
    return str(path.resolve()) if path.exists() else spec
