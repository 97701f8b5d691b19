"""ControlNet files on Stable Diffusion models: diffusers folders and original-layout single files.

A ControlNet here is diffusers' `ControlNetModel`, run by the engine's `ControlledDenoiser`
(`diffusion.control`) beside the model's UNet exactly as `StableDiffusionControlNetPipeline`
runs it: same scaled latents and timestep, the condition map as [0, 1] RGB resized to the
output size (diffusers' `VaeImageProcessor` without normalisation), the same map for both CFG
branches, residuals scaled by each control's weight and summed like `MultiControlNetModel`.

Two kinds of file load, fully offline:

- a diffusers folder (config.json + diffusion_pytorch_model.safetensors); its config is checked
  against this model's UNet before any weight is read;
- one .safetensors in the original layout (`control_model.*` keys, e.g.
  control_v11p_sd15_canny.safetensors, or the same keys unprefixed). Such a file has no config:
  the config is `ControlNetModel.from_unet(unet)`'s, and the keys are converted by diffusers'
  own `convert_controlnet_checkpoint`; a file for another base fails on its shapes.

Either way a ControlNet made for another base (another text width or block layout) is refused
with a `ConfigError` on `control_model` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelNotFoundError
from ..io.files import sha256_file

WEIGHTS = "diffusion_pytorch_model.safetensors"
FP16_WEIGHTS = "diffusion_pytorch_model.fp16.safetensors"
ORIGINAL_PREFIX = "control_model."
FIELD = "control_model"
FIX = "use a ControlNet made for this model's base (SD 1.x, SD 2.x or SDXL)"


@dataclass(frozen=True)
class LoadedControlNet:
    """A loaded ControlNet with what its recipe entry records."""

    network: Any
    reference: str  # a registry name as given, else the resolved path
    sha256: str  # of the weights file
    layout: str  # "diffusers" (folder) or "original" (single file)


# ------------------------------------------------------------------------------ resolving

def resolve_controlnet(spec: str | Path) -> tuple[Path, str]:
    """(path, recipe reference) of a ControlNet folder or file, by path or registry name."""
    path = Path(spec).expanduser()
    if path.exists():
        return path.resolve(), str(path.resolve())
    from ..registry import Registry

    for entry in Registry().entries():
        if entry.name == str(spec):
            return entry.root, str(spec)
    raise ModelNotFoundError(f"no ControlNet folder or file {str(spec)!r}", field=FIELD,
                             fix="pass a diffusers ControlNet folder (config.json + "
                                 f"{WEIGHTS}) or an original-layout .safetensors")


def _weights_file(folder: Path) -> tuple[Path, str | None]:
    """The folder's safetensors weights and their diffusers variant (None or "fp16")."""
    for name, variant in ((WEIGHTS, None), (FP16_WEIGHTS, "fp16")):
        if (folder / name).is_file():
            return folder / name, variant
    raise ModelNotFoundError(f"{folder} has no {WEIGHTS}", field=FIELD,
                             fix="convert pickled .bin weights to safetensors, or pass a "
                                 "folder saved with safe_serialization=True")


# ------------------------------------------------------------------------------ fitting

def _per_level(value: Any, levels: int) -> list:
    """A per-level config value (int or list in diffusers configs) as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def _fit_problems(config: dict, unet_config: Any) -> list[str]:
    """How a ControlNet config differs from what this UNet needs (empty when it fits)."""
    levels = len(unet_config["block_out_channels"])
    wanted = {
        "cross_attention_dim (text width)": unet_config["cross_attention_dim"],
        "block_out_channels": list(unet_config["block_out_channels"]),
        "layers_per_block": _per_level(unet_config["layers_per_block"], levels),
        "in_channels (latent channels)": unet_config["out_channels"],
        "addition_embed_type": unet_config.get("addition_embed_type"),
    }
    got = {
        "cross_attention_dim (text width)": config.get("cross_attention_dim"),
        "block_out_channels": list(config.get("block_out_channels") or []),
        "layers_per_block": _per_level(config.get("layers_per_block"),
                                       len(config.get("block_out_channels") or [])),
        "in_channels (latent channels)": config.get("in_channels"),
        "addition_embed_type": config.get("addition_embed_type"),
    }
    if wanted["addition_embed_type"] == "text_time":
        key = "projection_class_embeddings_input_dim (SDXL pooled + size width)"
        wanted[key] = unet_config.get("projection_class_embeddings_input_dim")
        got[key] = config.get("projection_class_embeddings_input_dim")
    return [f"{name} {got[name]} (this model: {wanted[name]})" for name in wanted
            if got[name] != wanted[name]]


def check_controlnet_fits(config: dict, unet_config: Any, source: Path) -> None:
    """Refuse a ControlNet config made for another base, or one this pipeline cannot drive."""
    problems = _fit_problems(config, unet_config)
    if problems:
        raise ConfigError(f"{source.name} is a ControlNet for another base model: "
                          + "; ".join(problems), field=FIELD, fix=FIX)
    if config.get("conditioning_channels", 3) != 3:
        raise ConfigError(f"{source.name} takes {config['conditioning_channels']}-channel maps; "
                          "condition maps are RGB here", field=FIELD,
                          fix="use a ControlNet with 3 conditioning channels")
    if config.get("global_pool_conditions"):
        raise ConfigError(f"{source.name} pools its condition (guess mode only)", field=FIELD,
                          fix="use a ControlNet without global_pool_conditions")


# ------------------------------------------------------------------------------ loading

def _load_folder(folder: Path, unet, dtype: torch.dtype) -> tuple[Any, Path]:
    from diffusers import ControlNetModel

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"{folder} has no config.json", field=FIELD,
                                 fix="a diffusers ControlNet folder holds config.json and "
                                     f"{WEIGHTS}")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("_class_name", "ControlNetModel") != "ControlNetModel":
        raise ConfigError(f"{folder.name} holds a {config['_class_name']}, not a ControlNetModel",
                          field=FIELD, fix="pass a ControlNet folder")
    check_controlnet_fits(config, unet.config, folder)  # before reading any weight
    weights, variant = _weights_file(folder)
    network = ControlNetModel.from_pretrained(str(folder), local_files_only=True,
                                              use_safetensors=True, variant=variant,
                                              torch_dtype=dtype)
    return network, weights


def controlnet_config_for(unet) -> dict:
    """The config of `ControlNetModel.from_unet(unet)`, built without allocating weights."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    with init_empty_weights():
        skeleton = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    return {k: v for k, v in dict(skeleton.config).items() if not k.startswith("_")}


def read_original_controlnet(path: Path) -> dict[str, torch.Tensor]:
    """The ControlNet tensors of a single .safetensors file, prefix `control_model.` removed."""
    from safetensors import safe_open

    if path.suffix.lower() != ".safetensors":
        raise ConfigError(f"{path.name} is not a .safetensors file", field=FIELD,
                          fix="convert pickled ControlNet checkpoints to .safetensors first")
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        prefixed = [k for k in keys if k.startswith(ORIGINAL_PREFIX)]
        if prefixed:  # ControlNet inside a full checkpoint, or on its own with the prefix
            return {k[len(ORIGINAL_PREFIX):]: handle.get_tensor(k) for k in prefixed}
        markers = ("input_hint_block.0.weight", "controlnet_cond_embedding.conv_in.weight")
        if any(marker in keys for marker in markers):
            return {k: handle.get_tensor(k) for k in keys}
    raise ConfigError(f"{path.name} holds no ControlNet weights (no control_model.* keys)",
                      field=FIELD, fix="pass a ControlNet .safetensors or a diffusers folder")


def _load_single_file(path: Path, unet, dtype: torch.dtype) -> Any:
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import (DIFFUSERS_TO_LDM_MAPPING,
                                                     convert_controlnet_checkpoint)

    config = controlnet_config_for(unet)
    original = read_original_controlnet(path)
    state = convert_controlnet_checkpoint(original, config)
    if config.get("addition_embed_type") == "text_time":
        # SDXL's pooled-text/size embedding: diffusers' own key table, which its converter skips
        for new, old in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
            if old in original and new not in state:
                state[new] = original[old]
    state = {k: v for k, v in state.items() if v is not None}
    with init_empty_weights():  # parameters on the meta device: no random initialisation
        network = ControlNetModel.from_config(config)
    expected = network.state_dict()
    wrong = [f"{k} {tuple(state[k].shape)} (this model: {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    missing = [k for k in expected if k not in state]
    if wrong or missing:
        detail = f"first: {wrong[0]}" if wrong else f"first missing: {missing[0]}"
        raise ConfigError(f"{path.name} does not fit this model's UNet ({len(wrong)} weights of "
                          f"other shapes, {len(missing)} missing; {detail})", field=FIELD, fix=FIX)
    network.load_state_dict({k: state[k].to(dtype) for k in expected}, assign=True)
    return network


def load_sd_controlnet(spec: str | Path, unet, device: torch.device | str = "cpu",
                       cache: dict | None = None) -> LoadedControlNet:
    """A ControlNet folder or single file for `unet`, in its dtype on `device`; cached by path
    and file time, so a replaced file is read again."""
    path, reference = resolve_controlnet(spec)
    if path.is_dir():
        weights = _weights_file(path)[0]
    else:
        weights = path
    stat = weights.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, str(device), str(unet.dtype))
    if cache is not None and key in cache:
        return cache[key]
    if path.is_dir():
        network, _ = _load_folder(path, unet, unet.dtype)
        layout = "diffusers"
    else:
        network = _load_single_file(path, unet, unet.dtype)
        layout = "original"
    loaded = LoadedControlNet(network.to(device).eval().requires_grad_(False), reference,
                              sha256_file(weights), layout)
    if cache is not None:
        cache[key] = loaded
    return loaded


# ------------------------------------------------------------------------------ generation

def control_image_for_sd(image, size, vae_scale_factor: int) -> torch.Tensor:
    """A condition map as diffusers' ControlNet pipelines prepare it: RGB, resized to the output
    size (a side or (width, height)), [1, 3, height, width] in [0, 1]."""
    from diffusers.image_processor import VaeImageProcessor

    from ..pipeline import size_pair

    width, height = size_pair(size)
    processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor, do_convert_rgb=True,
                                  do_normalize=False)
    return processor.preprocess(image, height=height, width=width).float()


def sd_controlled_denoiser(denoiser, controls: Sequence, schedule: torch.Tensor, *, unet,
                           size, vae_scale_factor: int, device: torch.device | str = "cpu",
                           cache: dict | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """`denoiser` under `controls` (`ControlInput`s) as a `ControlledDenoiser`, and the recipe
    entry of each control (map hash, ControlNet reference and weights hash, scale, window)."""
    from ..diffusion.control import Control, ControlledDenoiser, check_control_settings
    from ..pipeline import _read_input_image

    built, entries = [], []
    for control in controls:
        check_control_settings(control.scale, control.start, control.end)
        loaded = load_sd_controlnet(control.model, unet, device, cache)
        image, image_hash = _read_input_image(control.image, "RGB", "control_image")
        tensor = control_image_for_sd(image, size, vae_scale_factor).to(device)
        built.append(Control(loaded.network, tensor, control.scale, control.start, control.end))
        entries.append({"image_hash": image_hash, "model": loaded.reference,
                        "model_hash": loaded.sha256, "format": loaded.layout,
                        "scale": control.scale, "start": control.start, "end": control.end})
    return ControlledDenoiser(denoiser, built, schedule), entries


# ------------------------------------------------------------------------------ writing

def controlnet_original_state_dict(controlnet) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel's weights in the original layout (`control_model.*` keys):
    the inverse of diffusers' `convert_controlnet_checkpoint`."""
    from .single_file import _apply_prefix_map, unet_prefix_map

    config = dict(controlnet.config)
    mapping = unet_prefix_map({**config, "up_block_types": []})  # a ControlNet has no decoder
    plain: dict[str, str] = {}
    embedding = controlnet.controlnet_cond_embedding
    # input_hint_block is Sequential(conv, SiLU, conv, SiLU, ...): convolutions at even slots
    mapping["controlnet_cond_embedding.conv_in."] = ("input_hint_block.0.", plain)
    for i in range(len(embedding.blocks)):
        mapping[f"controlnet_cond_embedding.blocks.{i}."] = (f"input_hint_block.{2 * i + 2}.",
                                                             plain)
    mapping["controlnet_cond_embedding.conv_out."] = (
        f"input_hint_block.{2 * len(embedding.blocks) + 2}.", plain)
    for i in range(len(controlnet.controlnet_down_blocks)):
        mapping[f"controlnet_down_blocks.{i}."] = (f"zero_convs.{i}.0.", plain)
    mapping["controlnet_mid_block."] = ("middle_block_out.0.", plain)
    state = _apply_prefix_map(controlnet.state_dict(), mapping, FIELD)
    return {ORIGINAL_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_controlnet_single_file(controlnet, path: str | Path) -> Path:
    """Write a diffusers ControlNetModel as one original-layout .safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ConfigError(f"{path.name} does not end in .safetensors", field="path",
                          fix="name the output file *.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(controlnet_original_state_dict(controlnet), str(path), metadata={"format": "pt"})
    return path
