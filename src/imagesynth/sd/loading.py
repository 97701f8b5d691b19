"""Load a user's Stable Diffusion weights (diffusers folder or single file) as an `SDPipeline`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import ConfigError, ModelNotFoundError

FAMILY = "stable-diffusion"


SD_KEY_PREFIXES = ("model.diffusion_model.", "conditioner.embedders.")


def is_sd_path(path: str | Path, trust_pickle: str | None = None) -> bool:
    """True for a diffusers folder (`model_index.json`), or a single file with SD's key layout
    (a `.safetensors`, or a pickle `.ckpt` the user trusted by its SHA-256)."""
    from ..io.checkpoint import PICKLE_SUFFIXES

    path = Path(path)
    if path.is_dir():
        return (path / "model_index.json").is_file()
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return any(key.startswith(SD_KEY_PREFIXES) for key in handle.keys())
        except Exception:  # not readable as safetensors: the registry's own check reports it
            return False
    if path.is_file() and suffix in PICKLE_SUFFIXES and trust_pickle:
        return any(key.startswith(SD_KEY_PREFIXES) for key in _pickle_state(path, trust_pickle))
    return False


def _pickle_state(path: Path, trust_pickle: str | None) -> dict:
    """The state dict of a pickle checkpoint (SD's `.ckpt` nests it under `state_dict`)."""
    from ..io.checkpoint import load_weights

    state = load_weights(path, trust_pickle=trust_pickle, check_finite=False)
    return state.get("state_dict", state) if isinstance(state.get("state_dict"), dict) else state


def as_safetensors(path: str | Path, trust_pickle: str | None = None) -> Path:
    """`path` itself, or for a trusted pickle `.ckpt` a safetensors copy of its tensors (cached
    by the pickle's SHA-256), so every later step reads safetensors only."""
    from safetensors.torch import save_file

    from ..io.checkpoint import PICKLE_SUFFIXES
    from ..io.files import sha256_file
    from ..paths import cache_dir

    path = Path(path)
    if path.is_dir() or path.suffix.lower() not in PICKLE_SUFFIXES:
        return path
    target = cache_dir("sd-converted") / f"{sha256_file(path)}.safetensors"
    if not target.is_file():
        tensors = {key: value.contiguous() for key, value in _pickle_state(path, trust_pickle).items()
                   if isinstance(value, torch.Tensor)}
        partial = target.with_suffix(".partial")
        save_file(tensors, str(partial))
        partial.replace(target)
    return target


def describe_sd(path: str | Path, prediction_type: str | None = None,
                trust_pickle: str | None = None, config: str | Path | None = None) -> dict:
    """What the registry records about SD weights: arch, prediction, inpaint, layout, reason,
    and for a single file the config folder it loads with (None: the standard one)."""
    info = detect(as_safetensors(path, trust_pickle), prediction_type=prediction_type)
    if config is not None:
        if Path(path).is_dir():
            raise ConfigError("a diffusers folder carries its own configs", field="config",
                              fix="leave --config out for folders")
        from .detect import detect_folder

        expected = detect_folder(Path(config))
        if (expected.arch, expected.inpaint) != (info.arch, info.inpaint):
            raise ConfigError(f"config folder {config} is for {expected.arch}, the file is "
                              f"{info.arch}", field="config",
                              fix="pass a diffusers folder of the same kind of model")
        config = str(Path(config).resolve())
    return {"config": config,"arch": info.arch, "prediction": info.prediction, "inpaint": info.inpaint,
            "layout": info.layout, "reason": info.reason,
            "prediction_override": prediction_type is not None,
            "resolution": _native_resolution(Path(path), info),
            "text_encoder": TEXT_ENCODERS[info.arch]}


TEXT_ENCODERS = {"sd1": "CLIP ViT-L/14", "sd2": "OpenCLIP ViT-H/14",
                 "sdxl": "CLIP ViT-L/14 + OpenCLIP ViT-bigG/14"}


def _native_resolution(path: Path, info) -> int:
    """The side the model was trained at: from a folder's configs, else the standard one."""
    if path.is_dir():
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    if info.arch == "sdxl":
        return 1024
    return 768 if info.arch == "sd2" and info.prediction == "v_prediction" else 512


def detect(path: str | Path, prediction_type: str | None = None):
    """The `CheckpointInfo` (arch, prediction, inpaint, layout) of a folder or single file."""
    from .detect import detect_folder, detect_single_file, normalise_prediction

    if prediction_type is not None:  # "v", "eps", ... -> "v_prediction", "epsilon"
        prediction_type = normalise_prediction(prediction_type)
    path = Path(path)
    if path.is_dir():
        return detect_folder(path, prediction_type=prediction_type)
    return detect_single_file(path, prediction_type=prediction_type)


def combined_hash(files: dict[str, str]) -> str:
    """What recipes pin: a single file's own SHA-256, or for a folder one SHA-256 over every
    file's (relative path, SHA-256)."""
    if len(files) == 1:
        return next(iter(files.values()))
    digest = hashlib.sha256()
    for rel, file_hash in sorted(files.items()):
        digest.update(f"{rel}\0{file_hash}\n".encode())
    return digest.hexdigest()


def _pipeline_class(info):
    from diffusers import (StableDiffusionInpaintPipeline, StableDiffusionPipeline,
                           StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline)

    if info.arch == "sdxl":
        return StableDiffusionXLInpaintPipeline if info.inpaint else StableDiffusionXLPipeline
    return StableDiffusionInpaintPipeline if info.inpaint else StableDiffusionPipeline


def load_diffusers_pipeline(path: str | Path, info, *, config: str | Path | None = None,
                            dtype: torch.dtype = torch.float32):
    """The diffusers pipeline of a folder or single file, offline, with the scheduler's prediction
    type set to `info.prediction`."""
    path = Path(path)
    if path.is_dir():
        extra = {} if info.arch == "sdxl" else {"safety_checker": None,
                                                 "requires_safety_checker": False}
        try:
            pipe = _pipeline_class(info).from_pretrained(str(path), local_files_only=True,
                                                         torch_dtype=dtype, **extra)
        except (OSError, ValueError, EnvironmentError) as error:
            raise ModelNotFoundError(f"{path} does not load as a diffusers {info.arch} folder: "
                                     f"{str(error).splitlines()[0]}", field="path",
                                     fix="check the folder is complete (model_index.json, "
                                         "unet, vae, text_encoder, tokenizer, scheduler)") from None
    else:
        from ..errors import ImageSynthError
        from .single_file import load_single_file

        try:
            pipe, _ = load_single_file(path, config=config, prediction_type=info.prediction)
        except ImageSynthError:
            raise
        except (RuntimeError, ValueError, KeyError, OSError) as error:
            # e.g. a size mismatch: a fine-tune at another width, or a config for another model
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            where = f"config folder {config}" if config else "the standard configs"
            raise ConfigError(f"{path.name} does not fit {where}: {first}", field="config",
                              fix="register it with `imagesynth models add FILE --config FOLDER` "
                                  "(a diffusers folder of the same model)") from None
        pipe = pipe.to(dtype=dtype)
    scheduler = pipe.scheduler
    if scheduler.config.get("prediction_type") != info.prediction:
        pipe.scheduler = type(scheduler).from_config(scheduler.config,
                                                     prediction_type=info.prediction)
    return pipe


def load_sd_pipeline(path: str | Path, *, name: str | None = None, model_hash: str | None = None,
                     prediction_type: str | None = None, config: str | Path | None = None,
                     trust_pickle: str | None = None, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32):
    """An `SDPipeline` over the weights at `path` (a diffusers folder or a single file);
    `dtype` float16/bfloat16 halves the weights' memory (the sampler stays float32)."""
    from ..registry import hash_model_files
    from .pipeline import SDPipeline

    path = Path(path)
    digest = model_hash or combined_hash(hash_model_files(path))
    path = as_safetensors(path, trust_pickle)
    info = detect(path, prediction_type=prediction_type)
    pipe = load_diffusers_pipeline(path, info, config=config, dtype=dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return SDPipeline(pipe, info, name or str(path.resolve()), digest, device)
