"""Shipped diffusers configs of the standard Stable Diffusion models, so single files load offline.

A single-file checkpoint (`.safetensors` from CompVis/SGM training) holds weights only. diffusers'
`from_single_file(path, config=FOLDER, local_files_only=True)` needs FOLDER laid out like the
model's diffusers repository (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
scheduler/; SDXL also text_encoder_2/, tokenizer_2/). `standard_config_folder` builds that folder
once in the cache from the JSON files under `configs/<name>/` plus tokenizers written offline.

Sources
-------
Each `configs/<name>/<component>/*.json` is the file of the same path in the model's Hugging Face
repository at the revision named in `STANDARD`, read from public git copies of those
repositories on GitHub that keep their history (so the commit ids are the Hub's own):

* sd15         runwayml/stable-diffusion-v1-5 @ 1d0c4ebf
               (GitHub copy HDRJ-One/runwayml-stable-diffusion-v1-5; diffusers now fetches
               the same files from the re-upload stable-diffusion-v1-5/stable-diffusion-v1-5)
* sd15-inpaint runwayml/stable-diffusion-inpainting @ caac1048
               (jack-op11/stable-diffusion-inpainting)
* sd21         stabilityai/stable-diffusion-2-1 @ 36a01dc7 (Vikas-2025/Hugging_face_sta_dif_2.1)
* sd21-base    stabilityai/stable-diffusion-2-1-base @ 88bb1a46
               (jack-op11/stable-diffusion-2-1-base)
* sd2-inpaint  stabilityai/stable-diffusion-2-inpainting @ 81a84f49 (Teiboku/std2-inpaint)
* sdxl-base    stabilityai/stable-diffusion-xl-base-1.0 @ 46216598
               (HDRJ-One/stable-diffusion-xl-base-1.0)

They agree with diffusers' `single_file_utils`: `DIFFUSERS_DEFAULT_PIPELINE_PATHS` fetches these
repositories for SD1, SD1 inpainting (both now re-uploaded under stable-diffusion-v1-5/), SD2
(the 768 px v-model), SD2 inpainting and SDXL base; `DIFFUSERS_TO_LDM_DEFAULT_IMAGE_SIZE_MAP`
gives 512/768/1024; the LDM VAE default `scaling_factor` 0.18215 is the value SD1/SD2 VAE configs
leave implicit (SDXL's states 0.13025 and `force_upcast`). Two edits, neither changing behaviour:

* model_index.json of sd15-inpaint, sd21 and sd21-base names `CLIPImageProcessor` instead of
  `CLIPFeatureExtractor` (transformers 5 has no `CLIPFeatureExtractor`); the upstream repositories
  made the same change later (stable-diffusion-v1-5 #124, stable-diffusion-2-inpainting #28).
* scheduler_config.json states `prediction_type` and `timestep_spacing` where the repository left
  them to diffusers' defaults ("epsilon", "leading"), so every file names steps_offset,
  timestep_spacing and prediction_type explicitly.

Tokenizers are not stored: `write_clip_tokenizer` rebuilds vocab.json/merges.txt identical to the
repositories' files. SD1's and SDXL's `tokenizer` pad with `<|endoftext|>`; SD2's `tokenizer` and
SDXL's `tokenizer_2` (OpenCLIP's) pad with `!`, as the repositories' tokenizer folders do.

Models built from these configs (tests/test_sd_configs.py) have the published parameter counts:
SD 1.5 UNet 859,520,964 (diffusers' own `ModelMixin.num_parameters` docstring; DeepSpeed-MII's
README, with SD VAE 83,653,863 and CLIP ViT-L/14 text 123,060,480); SD 2.1 UNet 865,910,724 and
the 23-layer OpenCLIP-H text encoder 340,387,840 (buddy-mlir's BuddyStableDiffusion example, which
exports stable-diffusion-2-1-base's weights); SDXL UNet 2,567,463,684 (as printed by SDXL
fine-tuning projects); OpenCLIP-bigG text with projection 694,659,840 (module summaries of SD3,
whose text_encoder_2 is the same model). Inpainting UNets add the 14,400 weights of their 5 extra
input channels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .detect import ARCHS, normalise_prediction
from .tokenizer import END, FULL_MERGES, write_clip_tokenizer

SHIPPED_DIR = Path(__file__).with_name("configs")
#: written last into a materialised folder; its content says which shipped files built it
STAMP = ".complete"
#: bump when the folder layout built from the same shipped files changes
LAYOUT_VERSION = 1
OPENCLIP_PAD = "!"


@dataclass(frozen=True)
class StandardConfig:
    """One shipped config: the model it describes and the repository its JSON files came from."""

    name: str
    arch: str  # "sd1" | "sd2" | "sdxl"
    prediction: str  # "epsilon" | "v_prediction"
    inpaint: bool  # 9-channel UNet (latents + mask + masked-image latents)
    resolution: int  # native image side in pixels
    text_encoder: str
    source: str  # Hugging Face repository id
    revision: str  # commit of `source` the JSON files were taken from
    pipeline: str  # diffusers pipeline class named by model_index.json
    tokenizers: tuple[tuple[str, str], ...]  # (subfolder, pad token), written offline

    @property
    def shipped(self) -> Path:
        """The folder of JSON files shipped inside the package."""
        return SHIPPED_DIR / self.name


CLIP_L = "CLIP ViT-L/14 (OpenAI)"
OPENCLIP_H = "OpenCLIP ViT-H/14 (the 23 of its 24 layers SD2 uses)"
SD1_TOKENIZERS = (("tokenizer", END),)
SD2_TOKENIZERS = (("tokenizer", OPENCLIP_PAD),)

STANDARD: dict[str, StandardConfig] = {c.name: c for c in (
    StandardConfig("sd15", "sd1", "epsilon", False, 512, CLIP_L,
                   "runwayml/stable-diffusion-v1-5", "1d0c4ebf6ff58a5caecab40fa1406526bca4b5b9",
                   "StableDiffusionPipeline", SD1_TOKENIZERS),
    StandardConfig("sd15-inpaint", "sd1", "epsilon", True, 512, CLIP_L,
                   "runwayml/stable-diffusion-inpainting",
                   "caac1048f28756b68042add4670bec6f4ae314f8",
                   "StableDiffusionInpaintPipeline", SD1_TOKENIZERS),
    StandardConfig("sd21", "sd2", "v_prediction", False, 768, OPENCLIP_H,
                   "stabilityai/stable-diffusion-2-1", "36a01dc742066de2e8c91e7cf0b8f6b53ef53da1",
                   "StableDiffusionPipeline", SD2_TOKENIZERS),
    StandardConfig("sd21-base", "sd2", "epsilon", False, 512, OPENCLIP_H,
                   "stabilityai/stable-diffusion-2-1-base",
                   "88bb1a46821197d1ac0cb54d1d09fb6e70b171bc",
                   "StableDiffusionPipeline", SD2_TOKENIZERS),
    StandardConfig("sd2-inpaint", "sd2", "epsilon", True, 512, OPENCLIP_H,
                   "stabilityai/stable-diffusion-2-inpainting",
                   "81a84f49b15956b60b4272a405ad3daef3da4590",
                   "StableDiffusionInpaintPipeline", SD2_TOKENIZERS),
    StandardConfig("sdxl-base", "sdxl", "epsilon", False, 1024,
                   f"{CLIP_L} + OpenCLIP ViT-bigG/14 with projection",
                   "stabilityai/stable-diffusion-xl-base-1.0",
                   "462165984030d82259a11f4367a4eed129e94a7b",
                   "StableDiffusionXLPipeline",
                   (("tokenizer", END), ("tokenizer_2", OPENCLIP_PAD))),
)}


def standard_config_name(arch: str, prediction: str, inpaint: bool = False) -> str:
    """Name of the shipped config for (arch, prediction, inpaint), e.g. sd2 + v -> 'sd21'."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown Stable Diffusion architecture {arch!r}", field="arch",
                          fix=f"use one of {', '.join(ARCHS)}")
    prediction = normalise_prediction(prediction)
    for config in STANDARD.values():
        if (config.arch, config.prediction, config.inpaint) == (arch, prediction, bool(inpaint)):
            return config.name
    kind = f"{arch} {'inpainting ' if inpaint else ''}model"
    same_layout = [c.name for c in STANDARD.values()
                   if c.arch == arch and c.inpaint == bool(inpaint)]
    if same_layout:
        # a fine-tune with the other prediction type (e.g. a v-prediction SDXL) has the same
        # networks; the loader sets the scheduler's prediction type afterwards
        return same_layout[0]
    raise ConfigError(f"no shipped config for an {kind}", field="arch",
                      fix="load the model from its diffusers folder instead of a single file")


def standard_config(name: str) -> StandardConfig:
    """The `StandardConfig` called `name` (ConfigError naming the shipped ones otherwise)."""
    try:
        return STANDARD[name]
    except KeyError:
        raise ConfigError(f"no shipped Stable Diffusion config called {name!r}", field="config",
                          fix=f"use one of {', '.join(STANDARD)}") from None


def standard_config_folder(arch: str, prediction: str, inpaint: bool = False) -> Path:
    """A complete diffusers config folder (JSON + tokenizers, no weights) for a standard model."""
    return materialise(standard_config_name(arch, prediction, inpaint))


def materialise(name: str) -> Path:
    """Build the config folder `name` in the cache once; later calls return it unchanged."""
    config = standard_config(name)
    parent = _cache_parent()
    target = parent / config.name
    stamp = _fingerprint(config)
    if _is_complete(target, stamp):
        return target
    # Build beside the target and rename it into place: readers never see a half-written folder,
    # and of two racing processes one rename wins while the other finds the winner complete.
    # (a uniquely named mkdir rather than mkdtemp, whose 0700 mode would stick to the result)
    building = parent / f".{config.name}.{uuid.uuid4().hex}.tmp"
    building.mkdir()
    try:
        _build(config, building)
        (building / STAMP).write_text(stamp)
        _install(building, target, stamp)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def _cache_parent() -> Path:
    from ..paths import cache_dir

    return cache_dir("sd-configs")


def _fingerprint(config: StandardConfig) -> str:
    """Hash of everything the folder is built from: shipped files, tokenizer settings, layout."""
    digest = hashlib.sha256(f"{LAYOUT_VERSION}|{FULL_MERGES}|{config.tokenizers}".encode())
    for path in sorted(p for p in config.shipped.rglob("*") if p.is_file()):
        digest.update(path.relative_to(config.shipped).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _is_complete(folder: Path, stamp: str) -> bool:
    try:
        return (folder / STAMP).read_text() == stamp
    except OSError:
        return False


def _build(config: StandardConfig, folder: Path) -> None:
    if not (config.shipped / "model_index.json").is_file():
        raise ConfigError(f"the shipped config {config.name} is missing from {SHIPPED_DIR}",
                          field="config",
                          fix="reinstall imagesynth (its package data is incomplete)")
    shutil.copytree(config.shipped, folder, dirs_exist_ok=True)
    for subfolder, pad_token in config.tokenizers:
        write_clip_tokenizer(folder / subfolder, pad_token=pad_token)


def _install(building: Path, target: Path, stamp: str) -> None:
    """Rename `building` to `target`; tolerate a racing process that installed it first."""
    try:
        os.rename(building, target)  # fails while target exists and is not empty
        return
    except OSError:
        if _is_complete(target, stamp):
            return
    # target is stale (built from older shipped files) or foreign: move it aside, then install
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
    try:
        os.rename(target, aside)
    except FileNotFoundError:
        pass
    try:
        os.rename(building, target)
    except OSError:
        if not _is_complete(target, stamp):
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
