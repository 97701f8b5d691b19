"""Stable Diffusion single-file checkpoints: diffusers pipelines to the original layout and back.

`save_single_file` writes a diffusers SD1/SD2/SDXL pipeline as one `.safetensors` in the CompVis
(SD1/SD2) or SGM (SDXL) key layout that A1111, ComfyUI and diffusers' `from_single_file` read.
The key mapping is the inverse of diffusers'
`scripts/convert_diffusers_to_original_stable_diffusion.py` and
`scripts/convert_diffusers_to_original_sdxl.py` (Copyright The HuggingFace Team, Apache-2.0),
generalised: the original scripts hard-code 4 (SD) or 3 (SDXL) levels, 2 resnets per level and
which levels have attention; here all of that is read off the UNet/VAE config, so any
UNet2DConditionModel/AutoencoderKL of the SD shape converts, the tiny test models included.

`load_single_file` identifies the file (`detect.py`) and loads it with diffusers'
`from_single_file` against a local config folder, never touching the network.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from .detect import (SD1_TEXT, SD2_TEXT, SDXL_CLIP_G, SDXL_CLIP_L, UNET_PREFIX, CheckpointInfo,
                     detect_folder, detect_single_file, normalise_prediction)

VAE_PREFIX = "first_stage_model."
#: diffusers resnet sub-module -> CompVis ResBlock sub-module
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
               "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
               "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                 "to_out.0": "proj_out"}
#: VAE attention projections are 1x1 convolutions in the original layout
VAE_CONV_WEIGHTS = ("q.weight", "k.weight", "v.weight", "proj_out.weight")
OPEN_CLIP_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
OPEN_CLIP_SUBLAYER = {"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.",
                      "self_attn.out_proj.": "attn.out_proj.", "mlp.fc1.": "mlp.c_fc.",
                      "mlp.fc2.": "mlp.c_proj."}
OPEN_CLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                 "embeddings.position_embedding.weight": "positional_embedding",
                 "final_layer_norm.weight": "ln_final.weight",
                 "final_layer_norm.bias": "ln_final.bias"}


# ---------------------------------------------------------- key mapping (diffusers -> original)

def _layers(value: Any, count: int) -> list[int]:
    """A per-level count from an int-or-list config value (diffusers accepts both)."""
    return [int(value)] * count if isinstance(value, int) else [int(v) for v in value]


def _has_attention(block_type: str) -> bool:
    return "Attn" in block_type


def unet_prefix_map(config: dict) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers prefix -> (CompVis prefix, sub-module renames) for a UNet2DConditionModel."""
    down_types, up_types = list(config["down_block_types"]), list(config["up_block_types"])
    levels = len(config["block_out_channels"])
    layers = _layers(config["layers_per_block"], levels)
    plain: dict[str, str] = {}
    mapping = {
        "time_embedding.linear_1.": ("time_embed.0.", plain),
        "time_embedding.linear_2.": ("time_embed.2.", plain),
        "conv_in.": ("input_blocks.0.0.", plain),
        "conv_norm_out.": ("out.0.", plain),
        "conv_out.": ("out.2.", plain),
        # SDXL's text_time embedding and the class-projection embedding share `label_emb.0`
        "add_embedding.linear_1.": ("label_emb.0.0.", plain),
        "add_embedding.linear_2.": ("label_emb.0.2.", plain),
        "class_embedding.linear_1.": ("label_emb.0.0.", plain),
        "class_embedding.linear_2.": ("label_emb.0.2.", plain),
        "class_embedding.": ("label_emb.", plain),
    }
    index = 1  # input_blocks.0 is conv_in
    for level, block_type in enumerate(down_types):
        for j in range(layers[level]):
            mapping[f"down_blocks.{level}.resnets.{j}."] = (f"input_blocks.{index}.0.", UNET_RESNET)
            if _has_attention(block_type):
                mapping[f"down_blocks.{level}.attentions.{j}."] = (f"input_blocks.{index}.1.",
                                                                   plain)
            index += 1
        if level < levels - 1:  # every level but the last halves the resolution
            mapping[f"down_blocks.{level}.downsamplers.0.conv."] = (f"input_blocks.{index}.0.op.",
                                                                    plain)
            index += 1
    # the middle block is resnet, attention, resnet (one layer, as every SD UNet has)
    mid_attention = _has_attention(config.get("mid_block_type") or "UNetMidBlock2DCrossAttn")
    for j in range(2):
        mapping[f"mid_block.resnets.{j}."] = (f"middle_block.{2 * j if mid_attention else j}.",
                                              UNET_RESNET)
    if mid_attention:
        mapping["mid_block.attentions.0."] = ("middle_block.1.", plain)
    index = 0
    for level, block_type in enumerate(up_types):
        count = list(reversed(layers))[level] + 1
        for j in range(count):
            mapping[f"up_blocks.{level}.resnets.{j}."] = (f"output_blocks.{index}.0.", UNET_RESNET)
            if _has_attention(block_type):
                mapping[f"up_blocks.{level}.attentions.{j}."] = (f"output_blocks.{index}.1.", plain)
            if j == count - 1 and level < levels - 1:
                slot = 2 if _has_attention(block_type) else 1
                mapping[f"up_blocks.{level}.upsamplers.0."] = (f"output_blocks.{index}.{slot}.",
                                                               plain)
            index += 1
    return mapping


def vae_prefix_map(config: dict) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers key prefix -> (CompVis prefix, sub-module renames) for an AutoencoderKL config."""
    levels = len(config["block_out_channels"])
    layers = int(config["layers_per_block"])
    plain: dict[str, str] = {}
    mapping = {"quant_conv.": ("quant_conv.", plain),
               "post_quant_conv.": ("post_quant_conv.", plain)}
    for part in ("encoder", "decoder"):
        mapping.update({f"{part}.conv_in.": (f"{part}.conv_in.", plain),
                        f"{part}.conv_out.": (f"{part}.conv_out.", plain),
                        f"{part}.conv_norm_out.": (f"{part}.norm_out.", plain),
                        f"{part}.mid_block.attentions.0.": (f"{part}.mid.attn_1.", VAE_ATTENTION)})
        for j in range(2):
            mapping[f"{part}.mid_block.resnets.{j}."] = (f"{part}.mid.block_{j + 1}.", VAE_RESNET)
    for level in range(levels):
        # the decoder's levels are numbered from the bottom in the original, from the top here
        original = levels - 1 - level
        for j in range(layers):
            mapping[f"encoder.down_blocks.{level}.resnets.{j}."] = (
                f"encoder.down.{level}.block.{j}.", VAE_RESNET)
        for j in range(layers + 1):
            mapping[f"decoder.up_blocks.{level}.resnets.{j}."] = (
                f"decoder.up.{original}.block.{j}.", VAE_RESNET)
        if level < levels - 1:
            mapping[f"encoder.down_blocks.{level}.downsamplers.0."] = (
                f"encoder.down.{level}.downsample.", plain)
            mapping[f"decoder.up_blocks.{level}.upsamplers.0."] = (
                f"decoder.up.{original}.upsample.", plain)
    return mapping


def _apply_prefix_map(state_dict: dict[str, torch.Tensor], mapping: dict, component: str
                      ) -> dict[str, torch.Tensor]:
    """Rename each key by its longest mapped prefix; an unmapped key is an error, not a copy."""
    prefixes = sorted(mapping, key=len, reverse=True)
    out, unmapped = {}, []
    for key, tensor in state_dict.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            unmapped.append(key)
            continue
        target, renames = mapping[prefix]
        rest = key[len(prefix):]
        for old, new in renames.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        out[target + rest] = tensor
    if unmapped:
        raise ConfigError(f"{len(unmapped)} {component} weights have no Stable Diffusion name "
                          f"(first: {unmapped[0]})", field=component,
                          fix=f"use an SD1/SD2/SDXL {component} "
                          "(UNet2DConditionModel/AutoencoderKL)")
    return out


def convert_unet_to_original(state_dict: dict[str, torch.Tensor], config: dict
                             ) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict in the CompVis layout (unprefixed)."""
    return _apply_prefix_map(state_dict, unet_prefix_map(config), "unet")


def convert_vae_to_original(state_dict: dict[str, torch.Tensor], config: dict
                            ) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the CompVis layout (unprefixed)."""
    out = _apply_prefix_map(state_dict, vae_prefix_map(config), "vae")
    for key, tensor in out.items():
        if ".mid.attn_1." in key and key.endswith(VAE_CONV_WEIGHTS) and tensor.ndim == 2:
            out[key] = tensor.reshape(*tensor.shape, 1, 1)
    return out


def _text_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Text-model keys without `text_model.` (transformers >= 5.6 drops it in CLIPTextModel)."""
    return {key.removeprefix("text_model."): tensor for key, tensor in state_dict.items()
            if not key.endswith("position_ids")}  # a buffer, not a weight


def convert_clip_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel state dict as SD1/SDXL store it (`text_model.*` keys)."""
    return {"text_model." + key: tensor for key, tensor in _text_keys(state_dict).items()}


def convert_open_clip_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model in OpenCLIP's layout (SD2's encoder, SDXL's bigG)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in _text_keys(state_dict).items():
        if key == "text_projection.weight":
            # OpenCLIP multiplies `x @ text_projection`; a Linear computes `x @ W.T`
            out["text_projection"] = tensor.T.contiguous()
        elif key in OPEN_CLIP_TOP:
            out[OPEN_CLIP_TOP[key]] = tensor
        elif match := OPEN_CLIP_LAYER.fullmatch(key):
            layer, rest = match.groups()
            base = f"transformer.resblocks.{layer}."
            projection = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if projection:
                qkv.setdefault((base, projection[2]), {})[projection[1]] = tensor
                continue
            sub = next((old for old in OPEN_CLIP_SUBLAYER if rest.startswith(old)), None)
            if sub is None:
                raise ConfigError(f"text encoder weight {key} has no OpenCLIP name",
                                  field="text_encoder", fix="use a CLIP text encoder")
            out[base + OPEN_CLIP_SUBLAYER[sub] + rest[len(sub):]] = tensor
        else:
            raise ConfigError(f"text encoder weight {key} has no OpenCLIP name",
                              field="text_encoder", fix="use a CLIP text encoder")
    for (base, kind), parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise CheckpointError(f"{base} lacks one of q/k/v_proj.{kind}", field="text_encoder",
                                  fix="re-save the text encoder")
        # OpenCLIP's nn.MultiheadAttention keeps q, k, v stacked in one in_proj
        out[base + f"attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


# ---------------------------------------------------------------- reading a pipeline or folder

def _folder_state_dict(folder: Path, component: str) -> dict[str, torch.Tensor]:
    """All tensors of one component of a diffusers folder (single or sharded safetensors)."""
    from safetensors.torch import load_file

    found = sorted((folder / component).glob("*.safetensors"))
    # plain weights first; a folder saved with one variant only (e.g. fp16) is read as that
    files = [p for p in found if p.name.count(".") == 1]
    variants = {p.name.split(".")[1].split("-")[0] for p in found if p.name.count(".") == 2}
    if not files and len(variants) == 1:
        files = found
    if not files:
        raise ConfigError(f"{folder / component} has no unambiguous .safetensors weights",
                          field=component, fix="re-save the pipeline with "
                          "save_pretrained(safe_serialization=True)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def _components(source: Any
                ) -> tuple[dict[str, dict], dict[str, dict[str, torch.Tensor]], CheckpointInfo]:
    """(configs, state dicts, info) of the weighted components of a pipeline object or folder."""
    if isinstance(source, (str, Path)):
        folder = Path(source)
        info = detect_folder(folder)
        names = ["unet", "vae", "text_encoder"]
        names += ["text_encoder_2"] if info.arch == "sdxl" else []
        configs = {name: json.loads((folder / name / "config.json").read_text()) for name in names}
        return configs, {name: _folder_state_dict(folder, name) for name in names}, info
    text_2 = getattr(source, "text_encoder_2", None)
    if text_2 is not None:
        arch = "sdxl"
    else:
        arch = "sd2" if source.text_encoder.config.hidden_act == "gelu" else "sd1"
    prediction = normalise_prediction(source.scheduler.config.get("prediction_type", "epsilon"),
                                      field="scheduler")
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if arch == "sdxl" else [])
    configs = {name: dict(getattr(source, name).config) for name in ("unet", "vae")}
    states = {name: getattr(source, name).state_dict() for name in names}
    info = CheckpointInfo(arch=arch, prediction=prediction,
                          inpaint=int(source.unet.config.in_channels) == 9, layout="diffusers",
                          reason=f"{type(source).__name__} object")
    return configs, states, info


def original_state_dict(pipeline_or_folder: Any) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """The whole pipeline as one state dict in the CompVis (SD1/SD2) or SGM (SDXL) layout."""
    configs, states, info = _components(pipeline_or_folder)

    def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {prefix + key: tensor for key, tensor in state.items()}

    out = prefixed(UNET_PREFIX, convert_unet_to_original(states["unet"], configs["unet"]))
    out.update(prefixed(VAE_PREFIX, convert_vae_to_original(states["vae"], configs["vae"])))
    if info.arch == "sd1":
        out.update(prefixed(SD1_TEXT, convert_clip_to_original(states["text_encoder"])))
    elif info.arch == "sd2":
        # diffusers' SD2 encoder already stops at the penultimate block, as SD2 uses it
        out.update(prefixed(SD2_TEXT, convert_open_clip_to_original(states["text_encoder"])))
    else:
        out.update(prefixed(SDXL_CLIP_L, convert_clip_to_original(states["text_encoder"])))
        out.update(prefixed(SDXL_CLIP_G, convert_open_clip_to_original(states["text_encoder_2"])))
    return out, info


def save_single_file(pipeline_or_folder: Any, path: str | Path, *, dtype: torch.dtype | None = None,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write a diffusers SD1/SD2/SDXL pipeline (object or folder) as one original-layout file."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ConfigError(f"{path.name} does not end in .safetensors", field="path",
                          fix="name the output file *.safetensors")
    state, info = original_state_dict(pipeline_or_folder)
    tensors = {}
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous()
    # SAI model-spec spelling, so other tools read the prediction type too
    header = {"format": "pt", "modelspec.prediction_type":
              "v" if info.prediction == "v_prediction" else "epsilon"}
    header.update({str(k): str(v) for k, v in (metadata or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    try:  # write beside the target, then rename: a crash never leaves a half-written checkpoint
        save_file(tensors, str(temporary), metadata=header)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------- loading

def _pipeline_class(info: CheckpointInfo):
    import diffusers

    if info.arch == "sdxl":
        return (diffusers.StableDiffusionXLInpaintPipeline if info.inpaint
                else diffusers.StableDiffusionXLPipeline)
    return (diffusers.StableDiffusionInpaintPipeline if info.inpaint
            else diffusers.StableDiffusionPipeline)


def _load_open_clip_g(path: Path, config: Path, torch_dtype: torch.dtype | None):
    """SDXL's second text encoder (OpenCLIP bigG) read from its own prefix.

    diffusers picks a CLIP loader by matching embedding widths, which sends CLIP-L's weights into
    the second encoder whenever both encoders have the same width (every tiny model); reading
    `conditioner.embedders.1.model.*` explicitly removes that guess.
    """
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with safe_open(str(path), framework="pt") as handle:
        checkpoint = {key: handle.get_tensor(key) for key in handle.keys()
                      if key.startswith(SDXL_CLIP_G)}
    model_config = CLIPTextConfig.from_pretrained(str(config), subfolder="text_encoder_2",
                                                  local_files_only=True)
    with init_empty_weights():  # parameters on the meta device: no 700M-parameter random init
        model = CLIPTextModelWithProjection(model_config)
    state = convert_open_clip_checkpoint(model, checkpoint, prefix=SDXL_CLIP_G)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(f"SDXL's second text encoder does not match its config (missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]})", field="path",
                              fix="pass config= a folder whose text_encoder_2 matches the file")
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model.eval()


def load_single_file(path: str | Path, *, config: str | Path | None = None,
                     prediction_type: str | None = None, torch_dtype: torch.dtype | None = None):
    """(diffusers pipeline, CheckpointInfo) of an SD1/SD2/SDXL single file, loaded fully offline."""
    path = Path(path)
    info = detect_single_file(path, prediction_type)
    if config is None:
        from .configs import standard_config_folder

        config = standard_config_folder(info.arch, info.prediction, info.inpaint)
    config = Path(config)
    expected = detect_folder(config)
    if (expected.arch, expected.inpaint) != (info.arch, info.inpaint):
        raise ConfigError(f"config folder {config} is for {expected.arch}"
                          f"{' inpainting' if expected.inpaint else ''} but the checkpoint is "
                          f"{info.arch}{' inpainting' if info.inpaint else ''}", field="config",
                          fix="pass a config folder of the checkpoint's family, or omit config")
    kwargs: dict[str, Any] = dict(config=str(config), local_files_only=True,
                                  torch_dtype=torch_dtype)
    if info.arch == "sdxl":
        kwargs["text_encoder_2"] = _load_open_clip_g(path, config, torch_dtype)
    else:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe = _pipeline_class(info).from_single_file(str(path), **kwargs)
    # the scheduler config came from the config folder; the checkpoint decides the prediction
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config,
                                                      prediction_type=info.prediction)
    return pipe, info
