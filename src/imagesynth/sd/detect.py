"""Tell which Stable Diffusion a checkpoint is (SD1, SD2, SDXL; eps or v; inpainting) from its keys.

A single `.safetensors` file is read through its header only (`safe_open`, slice shapes), so a
7 GB checkpoint is identified without loading a tensor. The family is decided by key structure,
not by widths, so tiny test checkpoints are identified as their full-size relatives are:
SGM's `conditioner.embedders.*` -> SDXL, OpenCLIP's `cond_stage_model.model.*` -> SD2, CLIP's
`cond_stage_model.transformer.*` -> SD1. A diffusers folder is read from its JSON configs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, ConfigError

ARCHS = ("sd1", "sd2", "sdxl")
PREDICTIONS = ("epsilon", "v_prediction")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")

UNET_PREFIX = "model.diffusion_model."
UNET_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
SD1_TEXT = "cond_stage_model.transformer."
SD2_TEXT = "cond_stage_model.model."
SDXL_CLIP_L = "conditioner.embedders.0.transformer."
SDXL_CLIP_G = "conditioner.embedders.1.model."
#: diffusers' own default per family (SD 2.x's diffusers config is the 768 px v-model)
DEFAULT_PREDICTION = {"sd1": "epsilon", "sd2": "v_prediction", "sdxl": "epsilon"}
#: spellings of the prediction seen in checkpoint metadata (SAI model spec writes "v")
PREDICTION_NAMES = {"epsilon": "epsilon", "eps": "epsilon", "v": "v_prediction",
                    "v_prediction": "v_prediction", "v-prediction": "v_prediction",
                    "vpred": "v_prediction", "v_pred": "v_prediction"}
METADATA_KEYS = ("modelspec.prediction_type", "prediction_type")
FOLDER_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_COMPONENTS = ("text_encoder_2", "tokenizer_2")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a Stable Diffusion checkpoint is, and which keys or metadata said so."""

    arch: str  # "sd1" | "sd2" | "sdxl"
    prediction: str  # "epsilon" | "v_prediction"
    inpaint: bool  # UNet input conv takes 9 channels (latents + mask + masked-image latents)
    layout: str  # "single_file" | "diffusers"
    reason: str


def normalise_prediction(value: str, *, field: str = "prediction_type") -> str:
    """Map a prediction spelling ('v', 'eps', 'v_prediction', ...) to epsilon / v_prediction."""
    name = PREDICTION_NAMES.get(str(value).strip().lower())
    if name is None:
        raise ConfigError(f"unknown prediction type {value!r}", field=field,
                          fix="use 'epsilon' or 'v_prediction'")
    return name


def _read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(key -> shape, metadata) of a safetensors file, without reading any tensor data."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            metadata = dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own SafetensorError on a bad header
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({error})",
                              field="path",
                              fix="re-download or re-export the checkpoint") from error
    return shapes, metadata


def _arch_from_keys(keys: list[str]) -> tuple[str, str]:
    """(arch, reason) from the text-encoder key prefixes of a CompVis/SGM checkpoint."""
    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in keys)

    if has(SDXL_CLIP_G) and has(SDXL_CLIP_L):
        return "sdxl", f"SGM text encoders ({SDXL_CLIP_L}*, {SDXL_CLIP_G}*)"
    if has("conditioner.embedders."):
        raise ConfigError("the checkpoint has SGM conditioner keys but not SDXL base's two text "
                          f"encoders ({SDXL_CLIP_L}* and {SDXL_CLIP_G}*); refiner-only and other "
                          "SGM models are not supported", field="path",
                          fix="use an SDXL base checkpoint (CLIP-L + OpenCLIP bigG)")
    if has(SD2_TEXT):
        return "sd2", f"OpenCLIP text encoder ({SD2_TEXT}*)"
    if has(SD1_TEXT):
        return "sd1", f"CLIP text encoder ({SD1_TEXT}*)"
    raise ConfigError("unrecognised text encoder: expected cond_stage_model.transformer.* (SD1), "
                      "cond_stage_model.model.* (SD2) or conditioner.embedders.0/1.* (SDXL)",
                      field="path", fix="use a full SD1/SD2/SDXL checkpoint that includes its "
                      "text encoder")


def _resolve_prediction(arch: str, override: str | None, has_v_pred_key: bool,
                        metadata: dict[str, str]) -> tuple[str, str]:
    """(prediction, reason): override > `v_pred` key > metadata > the family's default."""
    if override is not None:
        return normalise_prediction(override), "prediction_type given explicitly"
    if has_v_pred_key:
        return "v_prediction", "a 'v_pred' key"
    for key in METADATA_KEYS:
        if metadata.get(key):
            return (normalise_prediction(metadata[key], field=f"metadata {key}"),
                    f"metadata {key}={metadata[key]!r}")
    return DEFAULT_PREDICTION[arch], f"the {arch} default"


def detect_single_file(path: str | Path, prediction_type: str | None = None) -> CheckpointInfo:
    """Identify an SD1/SD2/SDXL `.safetensors` checkpoint from its header (no tensors loaded)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ConfigError(f"{path.name} is a pickle checkpoint; single-file loading reads only "
                          ".safetensors (pickles go through the registry's pickle policy)",
                          field="path", fix="convert it to .safetensors, or register it so the "
                          "pickle policy can vet it")
    if not path.is_file():
        raise ConfigError(f"no checkpoint file at {path}", field="path",
                          fix="pass the path of an existing .safetensors file")
    shapes, metadata = _read_header(path)
    if UNET_CONV_IN not in shapes:
        raise ConfigError(f"{path.name} has no Stable Diffusion UNet ({UNET_CONV_IN} missing); "
                          "expected the CompVis/SGM single-file layout", field="path",
                          fix="use an SD1/SD2/SDXL single-file checkpoint, or a diffusers folder")
    keys = list(shapes)
    arch, arch_reason = _arch_from_keys(keys)
    prediction, prediction_reason = _resolve_prediction(arch, prediction_type, "v_pred" in shapes,
                                                        metadata)
    in_channels = shapes[UNET_CONV_IN][1]
    reason = (f"{arch} from {arch_reason}; {prediction} from {prediction_reason}; "
              f"{in_channels} UNet input channels")
    return CheckpointInfo(arch=arch, prediction=prediction, inpaint=in_channels == 9,
                          layout="single_file", reason=reason)


def _read_json(path: Path, field: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing", field=field, fix="use a complete diffusers "
                          "folder (save_pretrained writes it)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid JSON ({error})", field=field,
                          fix="restore the file from the original model folder") from error


def detect_folder(folder: str | Path, prediction_type: str | None = None) -> CheckpointInfo:
    """Identify an SD1/SD2/SDXL diffusers folder from model_index.json and component configs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"no diffusers folder at {folder}", field="path",
                          fix="pass a folder holding model_index.json and the component folders")
    index = _read_json(folder / "model_index.json", "model_index.json")
    class_name = str(index.get("_class_name", ""))
    is_xl = "XL" in class_name or "text_encoder_2" in index or (folder / "text_encoder_2").is_dir()
    for component in FOLDER_COMPONENTS + (SDXL_COMPONENTS if is_xl else ()):
        if not (folder / component).is_dir():
            raise ConfigError(f"{folder} has no {component} folder", field=component,
                              fix=f"add the {component} component (a complete diffusers "
                              "save_pretrained folder has it)")
    unet = _read_json(folder / "unet" / "config.json", "unet")
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json", "scheduler")
    if is_xl:
        arch, arch_reason = "sdxl", f"{class_name or 'model_index'} with text_encoder_2"
    else:
        text = _read_json(folder / "text_encoder" / "config.json", "text_encoder")
        act = text.get("hidden_act", "quick_gelu")
        # OpenCLIP (SD2) uses exact GELU; OpenAI's CLIP (SD1) uses quick_gelu
        arch = "sd2" if act == "gelu" else "sd1"
        arch_reason = f"text_encoder hidden_act={act!r}"
    if prediction_type is not None:
        prediction, prediction_reason = normalise_prediction(prediction_type), "given explicitly"
    else:
        # diffusers schedulers default to epsilon when the config omits it
        prediction = normalise_prediction(scheduler.get("prediction_type", "epsilon"),
                                          field="scheduler")
        prediction_reason = "scheduler_config.json"
    in_channels = int(unet.get("in_channels", 4))
    reason = (f"{arch} from {arch_reason}; {prediction} from {prediction_reason}; "
              f"unet in_channels={in_channels}")
    return CheckpointInfo(arch=arch, prediction=prediction, inpaint=in_channels == 9,
                          layout="diffusers", reason=reason)
