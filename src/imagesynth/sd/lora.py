"""LoRA files on Stable Diffusion models: diffusers' own loader, on the UNet and the text encoders.

Each file is read once through imagesynth's safe loader (safetensors only) and handed to the
diffusers pipeline's `load_lora_weights` as a state dict, under an adapter name made from its
SHA-256; diffusers converts kohya/A1111 layouts (`lora_unet_*`, `lora_te_*`, `lora_te1_*`,
`lora_te2_*`) itself. A stack of files is `set_adapters` with their weights; no files disables
every adapter, which gives the base model's outputs exactly (peft then calls the plain layers).

Before anything is attached, the file's modules (after diffusers' conversion) are compared with
the model's: a module the model lacks, a component it lacks (an SDXL text encoder 2 on SD 1.x) or
a weight of another shape is one line naming the file and the key. Warnings diffusers, peft or
transformers log about unexpected or missing keys while loading, and size-mismatch errors, become
the same one-line error, and the half-loaded adapter is deleted, so the model is left unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..diffusion.lora import DIFFUSERS_METADATA_KEY, LoraFile, check_lora_path
from ..errors import ConfigError, IntegrityError
from ..io.checkpoint import CONFIG_KEY, load_weights, read_metadata
from ..io.files import sha256_file

#: adapters kept attached (least recently used ones beyond this are deleted)
MAX_LOADED = 8
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
FIX_BASE = "use a LoRA made for this model's base (SD 1.x, SD 2.x or SDXL)"


@dataclass(frozen=True)
class SDLora:
    """A LoRA file attached to the pipeline as one adapter."""

    path: Path
    sha256: str
    source_format: str  # "diffusers" | "kohya"
    adapter_name: str
    components: tuple[str, ...]  # e.g. ("unet", "text_encoder")

    def recipe_entry(self, weight: float) -> dict[str, Any]:
        """The recipe's record of this file at `weight` (as `diffusion.lora.lora_recipe`)."""
        return {"file": str(self.path.resolve()), "sha256": self.sha256, "weight": weight,
                "format": self.source_format, "components": list(self.components)}


def _misfit(path: Path, key: str, why: str) -> ConfigError:
    return ConfigError(f"{path.name} does not fit this model: {key!r} {why}", field="lora",
                       fix=FIX_BASE)


def _matches(pattern: str, module: str) -> bool:
    """peft's rule for `alpha_pattern` keys: the pattern names the module or a dotted suffix."""
    return re.match(rf"(.*\.)?({pattern.lstrip('^')})$", module) is not None


def fold_alphas(state: dict[str, torch.Tensor], metadata: dict[str, str]
                ) -> dict[str, torch.Tensor]:
    """Put diffusers' saved alphas (`lora_adapter_metadata`) into lora_B as alpha/rank.

    `load_lora_weights` reads that metadata only from a file path, never from a state dict, and
    would otherwise scale every module by 1 (alpha = rank): B·(alpha/r) gives the same delta.
    """
    text = metadata.get(DIFFUSERS_METADATA_KEY)
    if not text:
        return state
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError("the LoRA's lora_adapter_metadata is not JSON", field="lora",
                          fix="re-save the LoRA with diffusers or imagesynth") from None
    configs: dict[str, dict] = {}
    for key, value in raw.items():
        component, _, name = key.partition(".")
        configs.setdefault(component, {})[name] = value
    folded = dict(state)
    for key, value in state.items():
        component, _, rest = key.partition(".")
        config = configs.get(component)
        if config is None or not key.endswith(".lora_B.weight") or value.ndim < 2:
            continue
        module = rest.removesuffix(".lora_B.weight")
        alpha = config.get("lora_alpha")
        for pattern, pattern_alpha in (config.get("alpha_pattern") or {}).items():
            if _matches(pattern, module):
                alpha = pattern_alpha
                break
        if alpha is None:
            continue
        rank = value.shape[1]
        scale = float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)
        if scale != 1.0:
            folded[key] = value * scale
    return folded


def _layer_shape(modules: dict[str, nn.Module], module: str) -> tuple[int, ...] | None:
    """The weight shape of a linear/conv layer (the plain layer under a peft wrapper), or None."""
    layer = modules.get(module)
    layer = getattr(layer, "base_layer", layer)
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        return None
    return tuple(layer.weight.shape)


@contextmanager
def _captured() -> Iterator[list[str]]:
    """Collect (and keep off the console) what diffusers, peft and transformers report while
    loading: their load reports list other adapters' keys too, so the caller judges them."""
    from transformers.utils import logging as hf_logging

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    handler = Collect()
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft", "transformers")]
    saved = [(logger, logger.handlers[:], logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [handler], False
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(w.message) for w in caught)
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        if bars:
            hf_logging.enable_progress_bar()


def _misfit_line(message: str, adapter_name: str) -> str | None:
    """The line of a loader's report that says a key of this adapter did not fit, if any."""
    for line in message.splitlines():
        lower = line.lower()  # transformers' load report writes the statuses in capitals
        if any(w in lower for w in ("unexpected key", "size mismatch")) or \
                "UNEXPECTED" in line or "MISMATCH" in line:
            return line.strip()
        if "missing" in lower and f".{adapter_name}." in line:
            return line.strip()
    return None


class SDLoraSet:
    """The LoRA adapters attached to one Stable Diffusion pipeline, and which are active."""

    def __init__(self, pipe, info, model_hash: str | None = None):
        self.pipe = pipe
        self.info = info
        self.model_hash = model_hash
        self._loaded: OrderedDict[str, SDLora] = OrderedDict()  # by SHA-256, least recent first
        self._enabled = True
        self._fused: tuple | None = None  # the fused stack's key
        self._unfused_weights: dict[int, tuple[nn.Module, torch.Tensor]] = {}

    @property
    def components(self) -> list[str]:
        """The pipeline's components LoRAs attach to (unet, text_encoder, text_encoder_2)."""
        return [name for name in self.pipe._lora_loadable_modules
                if getattr(self.pipe, name, None) is not None]

    # ---- activation ------------------------------------------------------------------------
    def activate(self, loras: Sequence[tuple[Any, float]]) -> list[dict[str, Any]]:
        """Make exactly `loras` [(FILE or LoraFile, weight), ...] active; return recipe entries.

        An empty list disables every adapter: the model computes its base outputs exactly.
        """
        stack = [(self.load(lora), float(weight)) for lora, weight in loras]
        self._evict(keep={lora.sha256 for lora, _ in stack})
        entries = [lora.recipe_entry(weight) for lora, weight in stack]
        key = tuple((lora.sha256, weight) for lora, weight in stack)
        if self._fused is not None:
            if self._fused == key:
                return entries
            self.unfuse()
        if not stack:
            if self._loaded and self._enabled:
                self.pipe.disable_lora()
                self._enabled = False
            return entries
        weights: dict[str, float] = {}
        for lora, weight in stack:  # one file listed twice adds its weights
            weights[lora.adapter_name] = weights.get(lora.adapter_name, 0.0) + weight
        if not self._enabled:
            self.pipe.enable_lora()
            self._enabled = True
        self.pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
        return entries

    def load(self, lora) -> SDLora:
        """Attach one file (path or LoraFile) as an adapter, once per content (SHA-256)."""
        path = check_lora_path(lora.path if isinstance(lora, LoraFile) else lora)
        sha = sha256_file(path)
        if isinstance(lora, LoraFile) and lora.sha256 != sha:
            raise IntegrityError(f"{path.name} changed since it was read (SHA-256 differs)",
                                 field="lora", fix="read the file again")
        if sha in self._loaded:
            self._loaded.move_to_end(sha)
            return self._loaded[sha]
        if self._fused is not None:  # never attach under fused weights
            self.unfuse()
        state, metadata = load_weights(path), read_metadata(path)
        self._check_base(path, metadata)
        source_format = "kohya" if any(k.startswith(KOHYA_PREFIXES) for k in state) else \
            "diffusers"
        state = fold_alphas(state, metadata)
        components = self._check_fit(path, state)
        loaded = SDLora(path, sha, source_format, f"lora_{sha[:16]}", components)
        self._attach(path, state, loaded.adapter_name)
        self._loaded[sha] = loaded
        return loaded

    def _check_base(self, path: Path, metadata: dict[str, str]) -> None:
        """Refuse a file whose imagesynth metadata names other base weights."""
        info = json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else {}
        base_hash = info.get("base_model_hash")
        if base_hash and self.model_hash and base_hash != self.model_hash:
            raise ConfigError(f"{path.name} was made for {info.get('base_model')!r} (weights "
                              f"{base_hash[:12]}), not this model ({self.model_hash[:12]})",
                              field="lora", fix=FIX_BASE)

    def _convert(self, path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict as diffusers will load it (kohya converted, component prefixes)."""
        kwargs = {"unet_config": self.pipe.unet.config} if self.info.arch == "sdxl" else {}
        try:
            with _captured():  # diffusers' own notes on conversion are not for users
                converted, _ = type(self.pipe).lora_state_dict(dict(state), **kwargs)
        except (ValueError, KeyError, IndexError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"{path.name} is not a LoRA diffusers can read ({first})",
                              field="lora", fix="pass a kohya-ss or diffusers LoRA "
                                                ".safetensors file") from None
        return converted

    def _check_fit(self, path: Path, state: dict[str, torch.Tensor]) -> tuple[str, ...]:
        """Compare the file's modules and shapes with the model's; return what it changes."""
        from diffusers.utils import (convert_state_dict_to_diffusers, convert_state_dict_to_peft,
                                     convert_unet_state_dict_to_peft)

        if not state:
            raise ConfigError(f"{path.name} holds no tensors", field="lora",
                              fix="pass a LoRA .safetensors file")
        converted = self._convert(path, state)
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in converted.items():
            component, _, rest = key.partition(".")
            if component not in self.components:
                raise _misfit(path, key, f"is for a {component!r}, which this "
                                         f"{self.info.arch.upper()} model lacks")
            groups.setdefault(component, {})[rest] = value
        if not groups:
            raise ConfigError(f"{path.name} holds no LoRA tensors diffusers loads", field="lora",
                              fix="pass a kohya-ss or diffusers LoRA .safetensors file")
        for component, sub in groups.items():
            model = getattr(self.pipe, component)
            modules = dict(model.named_modules())
            if component == "unet":
                if "lora_A" not in next(iter(sub)):  # older diffusers/attn-procs naming
                    sub = convert_unet_state_dict_to_peft(sub)
            else:
                sub = convert_state_dict_to_peft(convert_state_dict_to_diffusers(sub))
                if not hasattr(model, "text_model"):  # flat CLIPTextModel in transformers 5
                    sub = {k.removeprefix("text_model."): v for k, v in sub.items()}
            for key, value in sub.items():
                full = f"{component}.{key}"
                if key.endswith(".lora_B.bias"):
                    continue
                if not key.endswith((".lora_A.weight", ".lora_B.weight")):
                    raise _misfit(path, full, "is not a lora_A/lora_B weight")
                module = key.rsplit(".lora_", 1)[0]
                shape = _layer_shape(modules, module)
                if shape is None:
                    raise _misfit(path, full, "changes a layer this model lacks")
                a, b = sub.get(f"{module}.lora_A.weight"), sub.get(f"{module}.lora_B.weight")
                if a is None or b is None:
                    raise _misfit(path, full, "has no lora_A/lora_B partner")
                expected = (b.shape[0], *a.shape[1:])
                if a.ndim < 2 or b.ndim < 2 or a.shape[0] != b.shape[1] or expected != shape:
                    raise _misfit(path, full, f"adapts a {tuple(expected)} weight, this "
                                              f"model's is {shape}")
        return tuple(c for c in self.components if c in groups)

    def _attach(self, path: Path, state: dict[str, torch.Tensor], name: str) -> None:
        """`load_lora_weights` under the adapter name; any misfit it reports undoes the load."""
        messages: list[str] = []
        try:
            with _captured() as messages:
                self.pipe.load_lora_weights(state, adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as exc:
            self._delete(name)
            text = str(exc).strip() or type(exc).__name__
            # transformers raises a bare "see the report": the logged report names the key
            found = [line for line in (_misfit_line(m, name) for m in [text, *messages]) if line]
            line = (found or text.splitlines())[0]
            raise ConfigError(f"{path.name} does not fit this model: {line[:300]}",
                              field="lora", fix=FIX_BASE) from None
        misfits = [line for line in (_misfit_line(m, name) for m in messages) if line]
        if misfits:
            self._delete(name)
            raise ConfigError(f"{path.name} does not fit this model: {misfits[0][:300]}",
                              field="lora", fix=FIX_BASE)
        self._restore_active()

    def _delete(self, name: str) -> None:
        """Remove one adapter from every component that has it (a failed load's half too)."""
        from diffusers.utils.peft_utils import delete_adapter_layers

        for component in self.components:
            model = getattr(self.pipe, component)
            if name not in getattr(model, "peft_config", {}):
                for module in model.modules():  # a load that failed before its config was kept
                    if hasattr(module, "delete_adapter") and name in getattr(module, "lora_A", {}):
                        module.delete_adapter(name)
                continue
            if component == "unet":
                model.delete_adapters([name])
            else:
                delete_adapter_layers(model, name)

    def _restore_active(self) -> None:
        """A new adapter becomes active on load: keep the previous activation until `activate`."""
        if not self._enabled:
            self.pipe.disable_lora()

    def _evict(self, keep: set[str]) -> None:
        """Delete the least recently used adapters beyond MAX_LOADED (never those in `keep`)."""
        for sha in [s for s in self._loaded if s not in keep]:
            if len(self._loaded) <= MAX_LOADED:
                break
            self._delete(self._loaded.pop(sha).adapter_name)

    # ---- fusing ----------------------------------------------------------------------------
    def fuse(self, loras: Sequence[tuple[Any, float]]) -> list[dict[str, Any]]:
        """Activate `loras` and fold them into the weights (faster when many images share them).

        `unfuse` (or activating another stack) restores the exact base weights.
        """
        entries = self.activate(loras)
        if self._fused is not None or not entries:
            return entries
        from peft.tuners.tuners_utils import BaseTunerLayer

        names = list(dict.fromkeys(self._loaded[e["sha256"]].adapter_name for e in entries))
        # exact copies (in host memory): unmerging subtracts the delta again, up to rounding
        for component in self.components:
            for module in getattr(self.pipe, component).modules():
                if isinstance(module, BaseTunerLayer) and any(n in module.lora_A for n in names):
                    base = module.get_base_layer()
                    self._unfused_weights[id(base)] = (base, base.weight.detach().to("cpu",
                                                                                   copy=True))
        self.pipe.fuse_lora(components=self.components, lora_scale=1.0, adapter_names=names)
        self._fused = tuple((e["sha256"], e["weight"]) for e in entries)
        return entries

    def unfuse(self) -> None:
        """Undo `fuse`: the adapters stay attached, the weights are the base model's again."""
        if self._fused is None:
            return
        self.pipe.unfuse_lora(components=self.components)
        with torch.no_grad():
            for base, weight in self._unfused_weights.values():
                base.weight.copy_(weight)
        self._unfused_weights.clear()
        self._fused = None
