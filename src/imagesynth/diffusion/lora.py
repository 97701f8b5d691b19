"""LoRA files for the diffusers UNet inside a denoiser: read, validate, apply (as a new denoiser), fuse.

A LoRA adds `scale · B·A` to a layer's weight, `scale = weight · alpha / rank`. The files follow
diffusers' layout (`pipe.load_lora_weights` reads them): safetensors keys
`unet.<module>.lora_A.weight` / `.lora_B.weight`, and diffusers' `lora_adapter_metadata` holding
the peft `LoraConfig` (rank, alpha, target modules). imagesynth adds `imagesynth.config` metadata
with the rank, alpha, targets and the base model's name and weights hash. kohya-ss files
(`lora_unet_<module with _>.lora_down.weight`, `.lora_up.weight`, `.alpha`) go through diffusers'
own converter (`lora_conversion_utils`), which maps them onto the diffusers UNet's module names.
Loading, weighting and fusing are peft's, through diffusers' `load_lora_adapter`/`set_adapters`.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ConfigError, IntegrityError, MissingFileError
from ..io.checkpoint import CONFIG_KEY, load_weights, read_metadata, save_weights
from ..io.files import sha256_file

#: diffusers' metadata key for the peft LoraConfig of a saved LoRA (`loaders.lora_base`)
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
PREFIX = "unet."
#: the attention projections diffusers' LoRA training scripts adapt
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: every linear or convolution inside the UNet's blocks (not its input/output convolutions)
ALL_TARGETS = ATTENTION_TARGETS + ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                                   "conv1", "conv2", "conv_shortcut", "time_emb_proj")
TARGETS = {"attn": ATTENTION_TARGETS, "all": ALL_TARGETS}
MAX_WEIGHT = 10.0
FIX_BASE = "use a LoRA trained for this model (see the file's imagesynth.config metadata)"


@dataclass(frozen=True)
class LoraSpec:
    """One `--lora FILE[:WEIGHT]` argument."""

    path: Path
    weight: float = 1.0


def parse_lora_spec(text: str) -> LoraSpec:
    """"style.safetensors:0.7" -> LoraSpec(path, 0.7); a bare path has weight 1."""
    text = text.strip()
    path, weight = text, 1.0
    if ":" in text and not Path(text).exists():
        path, _, weight_text = text.rpartition(":")
        try:
            weight = float(weight_text)
        except ValueError:
            raise ConfigError(f"{text!r} is not FILE[:WEIGHT]", field="lora",
                              fix='write e.g. "style.safetensors:0.8" (weight a number)') from None
    if not path:
        raise ConfigError(f"{text!r} names no file", field="lora",
                          fix='write e.g. "style.safetensors:0.8"')
    if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
        raise ConfigError(f"weight {weight} is outside [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]",
                          field="lora", fix="use a weight such as 0.5 or 1")
    return LoraSpec(Path(path), weight)


@dataclass(frozen=True)
class LoraFile:
    """A LoRA read from disk: peft-layout tensors (no prefix), ranks and alphas per module."""

    path: Path
    sha256: str
    source_format: str  # "imagesynth" | "diffusers" | "kohya"
    tensors: dict[str, torch.Tensor]
    ranks: dict[str, int]
    alphas: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def modules(self) -> list[str]:
        """The UNet modules this LoRA changes."""
        return sorted(self.ranks)

    def lora_config(self) -> dict[str, Any]:
        """peft `LoraConfig` keyword arguments: the common rank/alpha plus per-module exceptions."""
        rank = Counter(self.ranks.values()).most_common(1)[0][0]
        alpha = Counter(self.alphas.values()).most_common(1)[0][0]
        return {"r": rank, "lora_alpha": alpha, "target_modules": self.modules,
                "rank_pattern": {m: r for m, r in self.ranks.items() if r != rank},
                "alpha_pattern": {m: a for m, a in self.alphas.items() if a != alpha}}

    def delta(self, module: str) -> torch.Tensor:
        """(alpha / rank) · B·A of one module, shaped like its weight (the reference for tests)."""
        a, b = self.tensors[f"{module}.lora_A.weight"], self.tensors[f"{module}.lora_B.weight"]
        product = b.flatten(1) @ a.flatten(1)
        shape = (b.shape[0], *a.shape[1:])
        return product.reshape(shape) * (self.alphas[module] / self.ranks[module])


def _module_of(key: str) -> str:
    return key.rsplit(".lora_", 1)[0]


def _from_kohya(state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, float], int]:
    """kohya keys -> peft keys and module alphas, through diffusers' converter."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
    from diffusers.utils import convert_unet_state_dict_to_peft

    skipped = [k for k in state if k.startswith(("lora_te", "lora_te1_", "lora_te2_"))]
    unet_only = {k: v for k, v in state.items() if k not in skipped}
    try:
        converted, alphas = _convert_non_diffusers_lora_to_diffusers(unet_only)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"unreadable kohya LoRA ({str(exc).splitlines()[0]})", field="lora",
                          fix="pass a kohya-ss or diffusers LoRA .safetensors file") from None
    converted = {k.removeprefix(PREFIX): v for k, v in converted.items()}
    tensors = convert_unet_state_dict_to_peft(converted)
    module_alphas = {}
    for key, alpha in alphas.items():
        # the converter names an alpha after its down weight: convert that key the same way
        down_key = key.removeprefix(PREFIX).removesuffix(".alpha")
        (peft_key,) = convert_unet_state_dict_to_peft({down_key: torch.empty(0)})
        module_alphas[_module_of(peft_key)] = float(alpha)
    return tensors, module_alphas, len({k.split(".")[0] for k in skipped})


def check_lora_path(path: str | Path) -> Path:
    """The path of an existing `.safetensors` LoRA file (one-line errors naming `lora`)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no LoRA file at {path}", field="lora",
                               fix="pass the path of an existing .safetensors LoRA")
    if path.suffix.lower() != ".safetensors":
        raise ConfigError(f"{path.name} is not a .safetensors file", field="lora",
                          fix="LoRA files are read from .safetensors only (no pickles)")
    return path


def read_lora(path: str | Path) -> LoraFile:
    """Read a LoRA file (imagesynth/diffusers or kohya layout); errors name the field `lora`."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    path = check_lora_path(path)
    state = load_weights(path)
    metadata = read_metadata(path)
    info = json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else {}
    default_alpha, alphas, skipped = None, {}, 0
    if any(k.startswith("lora_unet_") or k.endswith(".lora_down.weight") for k in state):
        tensors, alphas, skipped = _from_kohya(state)
        source_format = "kohya"
    else:
        others = [k for k in state if not k.startswith(PREFIX)]
        if others and any(k.startswith(PREFIX) for k in state):
            raise ConfigError(f"{path.name} also changes {others[0].split('.')[0]!r}, which "
                              "imagesynth's models do not have", field="lora",
                              fix="pass a LoRA of the UNet only")
        tensors = {k.removeprefix(PREFIX): v for k, v in state.items()}
        if tensors and "lora_A" not in next(iter(tensors)):  # diffusers' older attn-proc layout
            tensors = convert_unet_state_dict_to_peft(tensors)
        source_format = "imagesynth" if info else "diffusers"
        default_alpha, alphas = _metadata_alphas(metadata.get(DIFFUSERS_METADATA_KEY))
    if not tensors:
        raise ConfigError(f"{path.name} holds no UNet LoRA tensors", field="lora",
                          fix="pass a LoRA trained for a diffusion UNet")
    ranks = _ranks(path.name, tensors)
    # without a recorded alpha the scale is 1 (alpha = rank), as diffusers assumes
    full_alphas = {module: float(alphas.get(module, default_alpha or rank))
                   for module, rank in ranks.items()}
    if skipped:
        info = {**info, "skipped_text_encoder_modules": skipped}
    return LoraFile(path, sha256_file(path), source_format, tensors, ranks, full_alphas, info)


def _metadata_alphas(text: str | None) -> tuple[float | None, dict[str, float]]:
    """(lora_alpha, alpha_pattern) from diffusers' `lora_adapter_metadata` (LoraConfig kwargs,
    keys maybe `unet.`-prefixed)."""
    if not text:
        return None, {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError("the LoRA's lora_adapter_metadata is not JSON", field="lora",
                          fix="re-save the LoRA with diffusers or imagesynth") from None
    config = {k.removeprefix(PREFIX): v for k, v in raw.items()}
    alpha = config.get("lora_alpha")
    pattern = {m: float(a) for m, a in (config.get("alpha_pattern") or {}).items()}
    return (float(alpha) if alpha is not None else None), pattern


def _ranks(name: str, tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Rank per module; refuses unpaired A/B tensors and A/B with different ranks."""
    ranks = {}
    for key, value in tensors.items():
        if not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ConfigError(f"{name}: unexpected tensor {key!r}", field="lora",
                              fix="only lora_A/lora_B weights are supported (no biases, DoRA)")
        module = _module_of(key)
        a, b = tensors.get(f"{module}.lora_A.weight"), tensors.get(f"{module}.lora_B.weight")
        if a is None or b is None:
            raise ConfigError(f"{name}: {module} has only one of lora_A/lora_B", field="lora",
                              fix="the file is incomplete; re-export it")
        if a.ndim < 2 or b.ndim < 2 or a.shape[0] != b.shape[1] or a.shape[0] < 1:
            raise ConfigError(f"{name}: {module} has rank {a.shape[0]} in lora_A but "
                              f"{b.shape[1] if b.ndim > 1 else '?'} in lora_B", field="rank",
                              fix="the file is corrupt or not a LoRA")
        ranks[module] = int(a.shape[0])
    return ranks


def find_unet(denoiser: nn.Module) -> nn.Module:
    """The diffusers `UNet2DConditionModel` inside a denoiser (LoRA attaches there)."""
    from diffusers import UNet2DConditionModel

    for module in denoiser.modules():
        if isinstance(module, UNet2DConditionModel):
            return module
    raise ConfigError("this model has no diffusers UNet to attach a LoRA to", field="model",
                      fix="use a diffusion model with a UNet2DConditionModel")


def check_compatible(lora: LoraFile, unet: nn.Module, model_hash: str | None = None) -> None:
    """Refuse a LoRA made for another base: wrong hash, missing modules or wrong shapes."""
    base_hash = lora.info.get("base_model_hash")
    if base_hash and model_hash and base_hash != model_hash:
        raise ConfigError(f"{lora.path.name} was trained on {lora.info.get('base_model')!r} "
                          f"(weights {base_hash[:12]}), not this model ({model_hash[:12]})",
                          field="lora", fix=FIX_BASE)
    modules = dict(unet.named_modules())
    for module in lora.modules:
        layer = modules.get(module)
        if layer is None:
            raise ConfigError(f"{lora.path.name} changes {module}, which this model lacks",
                              field="lora", fix=FIX_BASE)
        weight = getattr(layer, "weight", None)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)) or weight is None:
            raise ConfigError(f"{lora.path.name}: {module} is not a linear or conv layer",
                              field="lora", fix=FIX_BASE)
        a, b = lora.tensors[f"{module}.lora_A.weight"], lora.tensors[f"{module}.lora_B.weight"]
        expected = (b.shape[0], *a.shape[1:])
        if tuple(weight.shape) != tuple(expected):
            raise ConfigError(f"{lora.path.name}: {module} adapts a {tuple(expected)} weight, "
                              f"this model's is {tuple(weight.shape)}", field="lora", fix=FIX_BASE)


def _attach(unet: nn.Module, lora: LoraFile, adapter_name: str) -> None:
    state = {PREFIX + k: v for k, v in lora.tensors.items()}
    # diffusers keeps only the metadata entries under the prefix it loads
    metadata = {PREFIX + k: v for k, v in lora.lora_config().items()}
    with warnings.catch_warnings():  # peft warns on every adapter after the first: stacking is meant
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        unet.load_lora_adapter(state, prefix=PREFIX.rstrip("."), adapter_name=adapter_name,
                               metadata=metadata)


def apply_loras(denoiser: nn.Module, loras: Sequence[tuple[LoraFile, float]],
                model_hash: str | None = None) -> nn.Module:
    """A new denoiser: a copy of `denoiser` with the LoRAs attached at their weights (stacked).

    Weight w scales a LoRA's delta (`w · alpha/rank · B·A`); several LoRAs add their deltas.
    The given denoiser is left untouched, so the base model stays available.
    """
    if not loras:
        return denoiser
    adapted = copy.deepcopy(denoiser)
    unet = find_unet(adapted)
    for lora, _ in loras:  # all checked against the plain UNet, before any adapter wraps it
        check_compatible(lora, unet, model_hash)
    names = [f"lora{i}" for i in range(len(loras))]
    for (lora, _), name in zip(loras, names):
        _attach(unet, lora, name)
    unet.set_adapters(names, weights=[float(w) for _, w in loras])
    return adapted.eval()


def fuse_loras(denoiser: nn.Module, loras: Sequence[tuple[LoraFile, float]],
               model_hash: str | None = None) -> nn.Module:
    """A new plain denoiser whose weights include the LoRAs' weighted deltas (no adapter layers)."""
    adapted = apply_loras(denoiser, loras, model_hash)
    unet = find_unet(adapted)
    unet.fuse_lora(lora_scale=1.0, adapter_names=[f"lora{i}" for i in range(len(loras))])
    unet.unload_lora()
    return adapted


def lora_recipe(loras: Sequence[tuple[LoraFile, float]]) -> list[dict[str, Any]]:
    """What a recipe records per LoRA: file, SHA-256 and weight."""
    return [{"file": str(lora.path.resolve()), "sha256": lora.sha256, "weight": weight}
            for lora, weight in loras]


def lora_paths_from_recipe(entries: Sequence[dict]) -> list[tuple[Path, float]]:
    """A recipe's LoRA files and weights, refusing a missing or changed file (one line, field
    `lora`); each pipeline reads the files its own way (Stable Diffusion: `sd.lora`)."""
    checked = []
    for entry in entries:
        path = Path(entry["file"])
        if not path.is_file():
            raise MissingFileError(f"the recipe's LoRA {path} is missing", field="lora",
                                   fix="restore the file the image was made with")
        if sha256_file(path) != entry["sha256"]:
            raise IntegrityError(f"{path.name} changed since the image was made (SHA-256 "
                                 "differs)", field="lora",
                                 fix="restore the file the image was made with")
        checked.append((path, float(entry["weight"])))
    return checked


def loras_from_recipe(entries: Sequence[dict]) -> list[tuple[LoraFile, float]]:
    """Read a recipe's LoRAs back, refusing a missing or changed file (one line, field `lora`)."""
    return [(read_lora(path), weight) for path, weight in lora_paths_from_recipe(entries)]


def lora_state_dict(unet: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The trained adapter's tensors in diffusers' file layout (`unet.<module>.lora_A.weight`)."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    return {PREFIX + k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def save_lora(path: str | Path, tensors: dict[str, torch.Tensor], *, rank: int, alpha: float,
              targets: str, base_model: str, base_model_hash: str | None,
              extra: dict[str, Any] | None = None) -> Path:
    """Write a LoRA file diffusers' `load_lora_weights` reads, with imagesynth's metadata."""
    modules = sorted({_module_of(k.removeprefix(PREFIX)) for k in tensors})
    peft_config = {f"{PREFIX}r": rank, f"{PREFIX}lora_alpha": alpha,
                   f"{PREFIX}target_modules": modules}
    info = {"kind": "lora", "rank": rank, "alpha": alpha, "targets": targets,
            "base_model": base_model, "base_model_hash": base_model_hash, **(extra or {})}
    return save_weights(path, tensors, config=info,
                        metadata={"format": "pt",
                                  DIFFUSERS_METADATA_KEY: json.dumps(peft_config, sort_keys=True)})
