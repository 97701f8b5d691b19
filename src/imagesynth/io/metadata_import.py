"""Generation settings out of an image made by imagesynth, A1111, ComfyUI, InvokeAI or Fooocus.

Precedence: imagesynth's `imagesynth` JSON chunk, InvokeAI's `invokeai_metadata`, ComfyUI's
`prompt` (API graph: what ran) or else `workflow` (UI graph), then `parameters` (A1111 infotext,
or Fooocus JSON/infotext). JPEG/WEBP are read from EXIF UserComment, where A1111 and Fooocus put
the same text. Not read, but noted in `unknown`: InvokeAI 2.x `sd-metadata`/`Dream` chunks and
ComfyUI graphs without a KSampler/KSamplerAdvanced (SamplerCustom). A chunk over 1 MB or not valid
JSON is noted in `unknown` with the reason, never raised.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .images import ImageSource, open_image
from .pngmeta import A1111_KEY, MAX_RECIPE_BYTES, RECIPE_KEY, parse_a1111_parameters
from .sampler_names import to_imagesynth

#: values of `ImportedSettings.source`; "other" is JSON in `parameters` from an unidentified tool
SOURCES = ("imagesynth", "invokeai", "comfyui", "a1111", "fooocus", "other", "none")
#: the normalised keys `ImportedSettings.settings` may hold
SETTING_KEYS = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "sampler",
                "width", "height", "model", "strength")

# The chunks each reader owns: the winner's companions are not reported as ignored.
_CHUNK_GROUPS = {
    "imagesynth": (RECIPE_KEY, A1111_KEY),  # save_png writes both; the A1111 one is a copy
    "invokeai": ("invokeai_metadata", "invokeai_workflow", "invokeai_graph"),
    "comfyui": ("prompt", "workflow"),
    "a1111": (A1111_KEY, "fooocus_scheme"),
}
_LEGACY_INVOKEAI = ("sd-metadata", "Dream")
_KNOWN_CHUNKS = {key for keys in _CHUNK_GROUPS.values() for key in keys} | set(_LEGACY_INVOKEAI)
_SIZE = re.compile(r"^\s*\(?\s*'?(\d+)'?\s*[x×*,]\s*'?(\d+)'?\s*\)?\s*$")
_INT = re.compile(r"^\s*[+-]?\d+\s*$")


@dataclass(frozen=True)
class ImportedSettings:
    """What an image says about how it was made: the tool, normalised settings, everything else."""

    source: str
    settings: dict[str, Any] = field(default_factory=dict)
    unknown: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form for the web page."""
        return {"source": self.source, "settings": dict(self.settings),
                "unknown": dict(self.unknown)}


def _as_int(value: Any) -> int | None:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.match(value):
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None  # NaN would not survive strict JSON


_CONVERT = {"prompt": lambda v: v if isinstance(v, str) else None, "seed": _as_int,
            "steps": _as_int, "width": _as_int, "height": _as_int, "guidance_scale": _as_float,
            "strength": _as_float, "sampler": to_imagesynth}
_CONVERT["negative_prompt"] = _CONVERT["model"] = _CONVERT["prompt"]


class _Found:
    """Collects normalised settings and, beside them, every field that did not normalise."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.unknown: dict[str, Any] = {}

    def setting(self, key: str, value: Any) -> None:
        """Store `value` as `key`, or under `key` in unknown when it has no imagesynth form."""
        if value is None or value == "":
            return  # absent or empty: nothing to restore
        converted = _CONVERT[key](value)
        if converted is None:
            self.unknown[key] = value
        else:
            self.settings[key] = converted

    def size(self, value: Any) -> None:
        """`[w, h]`, `"512x768"` or Fooocus's `"(1152, 896)"` -> width and height."""
        if isinstance(value, (list, tuple)) and len(value) == 2:
            width, height = (_as_int(v) for v in value)
        else:
            match = _SIZE.match(value) if isinstance(value, str) else None
            width, height = (int(match[1]), int(match[2])) if match else (None, None)
        if width is None or height is None:
            self.unknown["size"] = value
        else:
            self.settings["width"], self.settings["height"] = width, height

    def fields(self, data: dict, names: dict[str, str]) -> None:
        """Map `data`'s keys through `names` into settings; the rest go to unknown as they are."""
        for key, value in data.items():
            if key in names:
                self.setting(names[key], value)
            else:
                self.unknown[key] = value


def _json_object(text: dict[str, str], key: str, found: _Found | None) -> dict | None:
    """The chunk `key` as a JSON object (capped at 1 MB), else None with the reason in unknown."""
    raw, reason, data = text.get(key), None, None
    if raw is None:
        return None
    if len(raw.encode("utf-8")) > MAX_RECIPE_BYTES:
        reason = f"over {MAX_RECIPE_BYTES} bytes, not read"
    else:
        try:
            # NaN/Infinity (Python's json.dumps writes them) stay strings: output is strict JSON
            data = json.loads(raw, parse_constant=str)
        except json.JSONDecodeError as exc:
            reason = f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        except (ValueError, RecursionError) as exc:  # 4300+-digit ints, absurd nesting
            reason = f"not valid JSON ({type(exc).__name__}: {str(exc)[:80]})"
    if reason is None and not isinstance(data, dict):
        reason = f"JSON {type(data).__name__}, not an object"
    if reason is not None and found is not None:
        found.unknown[f"{key} chunk"] = reason
    return data if reason is None else None


def _read_imagesynth(text: dict[str, str], found: _Found) -> str | None:
    recipe = _json_object(text, RECIPE_KEY, found)
    if recipe is None:
        return None
    rest = dict(recipe)
    for key in ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "sampler",
                "model", "strength"):
        found.setting(key, rest.pop(key, None))
    if (size := rest.pop("size", None)) is not None:
        found.size(size)
    if isinstance(rest.get("dream"), dict):
        # `kind: dream` recipes repeat the config's prompt/seed/steps/size/scorer at top level;
        # keep in unknown only what is not already a setting.
        same = {"prompt": "prompt", "seed": "seed", "steps": "steps", "width": "width",
                "height": "height", "scorer": "model"}
        rest["dream"] = {k: v for k, v in rest["dream"].items()
                         if not (k in same and found.settings.get(same[k]) == v)}
    found.unknown.update(rest)
    return "imagesynth"


_INVOKEAI_FIELDS = {"positive_prompt": "prompt", "negative_prompt": "negative_prompt",
                    "seed": "seed", "steps": "steps", "cfg_scale": "guidance_scale",
                    "scheduler": "sampler", "width": "width", "height": "height",
                    "strength": "strength"}


def _read_invokeai(text: dict[str, str], found: _Found) -> str | None:
    meta = _json_object(text, "invokeai_metadata", found)
    if meta is None:
        return None
    model = meta.pop("model", None)
    found.fields(meta, _INVOKEAI_FIELDS)
    if isinstance(model, dict):  # v4+: {key, hash, name, base, type}; v3: {model_name, ...}
        name_key = "name" if "name" in model else "model_name"
        found.setting("model", model.get(name_key))
        found.unknown.update({f"model.{k}": v for k, v in model.items() if k != name_key})
    else:
        found.setting("model", model)
    return "invokeai"


_KSAMPLERS = ("KSampler", "KSamplerAdvanced")
_CONTROL = object()  # the front end's control_after_generate widget, which follows a seed widget
# UI-format widgets_values order = the widget inputs of nodes.py INPUT_TYPES, in order
_WIDGETS: dict[str, tuple] = {
    "KSampler": ("seed", _CONTROL, "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("add_noise", "noise_seed", _CONTROL, "steps", "cfg", "sampler_name",
                         "scheduler", "start_at_step", "end_at_step",
                         "return_with_leftover_noise"),
    "CLIPTextEncode": ("text",), "EmptyLatentImage": ("width", "height", "batch_size"),
    "CheckpointLoaderSimple": ("ckpt_name",), "PrimitiveNode": ("value", _CONTROL),
}
_MAX_HOPS = 16  # links can form cycles in a hand-edited graph


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool))


def _widget_inputs(node_type: Any, values: Any) -> dict[str, Any]:
    """A UI node's widgets_values as named inputs (unknown node types: first value as `value`)."""
    if isinstance(values, dict):  # some node packs save widgets by name
        return {str(k): v for k, v in values.items()}
    if not isinstance(values, list) or not values:
        return {}
    names = _WIDGETS.get(node_type) if isinstance(node_type, str) else None
    if names is None:
        return {"value": values[0]} if isinstance(values[0], (str, int, float)) else {}
    inputs, rest = {}, list(values)
    for name in names:
        if not rest:
            break
        if name is not _CONTROL:
            inputs[name] = rest.pop(0)
        elif isinstance(rest[0], bool) or rest[0] in ("fixed", "increment", "decrement",
                                                      "randomize"):
            rest.pop(0)  # UI state ("randomize"), not a generation setting; absent in old files
    return inputs


def _workflow_to_api(workflow: dict) -> dict[str, dict] | None:
    """Rewrite a UI-format workflow into the API format's {id: {class_type, inputs}} shape."""
    nodes, links = workflow.get("nodes"), workflow.get("links")
    if not isinstance(nodes, list):
        return None
    origins: dict[Any, list] = {}
    for link in links if isinstance(links, list) else []:
        if isinstance(link, list) and len(link) >= 5:
            link_id, origin, slot = link[:3]
        elif isinstance(link, dict):  # the 1.0 workflow schema stores links as objects
            link_id, origin, slot = link.get("id"), link.get("origin_id"), link.get("origin_slot")
        else:
            continue
        if isinstance(link_id, (int, str)) and isinstance(origin, (int, str)):
            origins[link_id] = [str(origin), slot]
    graph: dict[str, dict] = {}
    for node in nodes:
        if not isinstance(node, dict) or not isinstance(node.get("id"), (int, str)):
            continue
        inputs = _widget_inputs(node.get("type"), node.get("widgets_values"))
        for slot in node.get("inputs") if isinstance(node.get("inputs"), list) else []:
            link_id = slot.get("link") if isinstance(slot, dict) else None
            if isinstance(link_id, (int, str)) and link_id in origins:
                inputs[str(slot.get("name"))] = origins[link_id]  # a link overrides its widget
        graph[str(node["id"])] = {"class_type": node.get("type"), "inputs": inputs,
                                  "mode": node.get("mode", 0)}
    return graph


def _node_order(node_id: str) -> tuple:
    try:  # "3" < "10"; subgraph ids look like "12:3"
        return (0, tuple(int(part) for part in node_id.split(":")), node_id)
    except ValueError:
        return (1, (), node_id)


def _inputs(node: dict | None) -> dict:
    return (node or {}).get("inputs") or {}


class _Graph:
    """An API-format graph, and the ids of the nodes the settings were read from."""

    def __init__(self, graph: dict) -> None:
        self.nodes = {str(k): v for k, v in graph.items()
                      if isinstance(v, dict) and isinstance(v.get("inputs", {}), dict)}
        self.used: set[str] = set()

    def node(self, link: Any, mark: bool = True) -> dict | None:
        node = self.nodes.get(str(link[0])) if _is_link(link) else None
        if node is not None and mark:
            self.used.add(str(link[0]))
        return node

    def value(self, value: Any) -> Any:
        """A literal input, or the value of the primitive/string node it links to (one level)."""
        if not _is_link(value):
            return value
        inputs = _inputs(self.node(value, mark=False))
        literals = {k: v for k, v in inputs.items() if not _is_link(v)}
        found = next((literals[k] for k in ("value", "text", "string", "seed", "int", "float")
                      if k in literals), None)
        if found is None and len(literals) == 1:
            found = next(iter(literals.values()))
        if found is not None:  # an unresolved source stays listed in comfyui_other_nodes
            self.used.add(str(value[0]))
        return found

    def trace(self, link: Any, via: tuple[str, ...], wanted: tuple[str, ...]) -> tuple:
        """(first node reached, node with a `wanted` input or None), following `via` inputs."""
        first = current = self.node(link)
        for _ in range(_MAX_HOPS):
            if current is None or any(name in _inputs(current) for name in wanted):
                return first, current
            inputs = _inputs(current)
            current = self.node(next((inputs[n] for n in via if _is_link(inputs.get(n))), None))
        return first, None


def _read_graph(graph: _Graph, found: _Found) -> None:
    """Settings of the first (by node id) active KSampler and the nodes feeding it."""
    samplers = sorted((nid for nid, node in graph.nodes.items()  # mode 2/4: muted, bypassed
                       if node.get("class_type") in _KSAMPLERS and node.get("mode") not in (2, 4)),
                      key=_node_order)
    if not samplers:
        found.unknown["comfyui"] = "no KSampler or KSamplerAdvanced node in the graph"
    else:
        if len(samplers) > 1:
            found.unknown["comfyui_ksamplers"] = len(samplers)
        graph.used.add(samplers[0])
        _read_ksampler(graph, graph.nodes[samplers[0]], found)
    others = sorted({str(node.get("class_type")) for nid, node in graph.nodes.items()
                     if nid not in graph.used})
    if others:  # e.g. LoRA loaders or upscalers the settings above do not capture
        found.unknown["comfyui_other_nodes"] = others


def _read_ksampler(graph: _Graph, sampler: dict, found: _Found) -> None:
    inputs = _inputs(sampler)
    seed_key = "noise_seed" if sampler.get("class_type") == "KSamplerAdvanced" else "seed"
    for name, key in ((seed_key, "seed"), ("steps", "steps"), ("cfg", "guidance_scale"),
                      ("sampler_name", "sampler")):
        found.setting(key, graph.value(inputs.get(name)))
    for role, key in (("positive", "prompt"), ("negative", "negative_prompt")):
        via = ("conditioning", role, "conditioning_to", "conditioning_1")
        _, encoder = graph.trace(inputs.get(role), via, ("text",))
        if encoder is not None:
            found.setting(key, graph.value(_inputs(encoder).get("text")))
    first, latent = graph.trace(inputs.get("latent_image"), ("samples", "latent"), ("width",))
    empty = latent is not None and str(latent.get("class_type")).startswith("Empty")
    for name in ("width", "height"):
        found.setting(name, graph.value(_inputs(latent).get(name)))
    if "batch_size" in _inputs(latent):
        found.unknown["batch_size"] = graph.value(_inputs(latent)["batch_size"])
    if first is not None and not empty:
        found.unknown["comfyui_latent_source"] = first.get("class_type")
    # denoise is img2img strength only when sampling an encoded image (VAEEncode,
    # VAEEncodeForInpaint, ...); 1 on an empty latent is plain text-to-image and carries nothing.
    denoise = graph.value(inputs.get("denoise"))
    if denoise is not None and str((first or {}).get("class_type")).startswith("VAEEncode"):
        found.setting("strength", denoise)
    elif denoise is not None and not (empty and _as_float(denoise) == 1.0):
        found.unknown["denoise"] = denoise
    _, loader = graph.trace(inputs.get("model"), ("model",), ("ckpt_name", "unet_name"))
    loader_inputs = _inputs(loader)
    found.setting("model", graph.value(loader_inputs.get("ckpt_name",
                                                         loader_inputs.get("unet_name"))))
    consumed = {seed_key, "steps", "cfg", "sampler_name", "positive", "negative",
                "latent_image", "model", "denoise"}
    found.unknown.update({name: value for name, value in inputs.items()  # scheduler, add_noise...
                          if name not in consumed and not _is_link(value)})


def _read_comfyui(text: dict[str, str], found: _Found) -> str | None:
    prompt = _json_object(text, "prompt", found)
    if prompt is not None:
        if any(isinstance(node, dict) and "class_type" in node for node in prompt.values()):
            _read_graph(_Graph(prompt), found)
            return "comfyui"
        found.unknown["prompt chunk"] = "JSON, but not a ComfyUI API graph"
    workflow = _json_object(text, "workflow", found)
    graph = _workflow_to_api(workflow) if workflow is not None else None
    if graph is not None:
        _read_graph(_Graph(graph), found)
        return "comfyui"
    if workflow is not None:
        found.unknown["workflow chunk"] = "JSON, but has no `nodes` list"
    return None


_A1111_FIELDS = {"Steps": "steps", "Sampler": "sampler", "CFG scale": "guidance_scale",
                 "Seed": "seed", "Model": "model", "Denoising strength": "strength"}
_HIRES_KEYS = ("Hires upscale", "Hires resize", "Hires steps", "Hires upscaler")
_FOOOCUS_FIELDS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed",
                   "steps": "steps", "guidance_scale": "guidance_scale", "sampler": "sampler",
                   "base_model": "model"}


def _read_parameters(text: dict[str, str], found: _Found) -> str | None:
    raw, scheme = text.get(A1111_KEY), text.get("fooocus_scheme")
    if raw is None:
        return None
    # Only a JSON object counts, quietly: A1111 prompts may start with "{" (dynamic prompts).
    data = _json_object(text, A1111_KEY, None) if raw.lstrip().startswith("{") else None
    if data is not None:  # Fooocus's own scheme
        if (size := data.pop("resolution", None)) is not None:
            found.size(size)
        found.fields(data, _FOOOCUS_FIELDS)
        fooocus = scheme == "fooocus" or str(data.get("version", "")).startswith("Fooocus")
        return "fooocus" if fooocus else "other"
    parsed = parse_a1111_parameters(raw)
    version = str(parsed.get("Version", ""))
    found.setting("prompt", parsed.pop("prompt"))
    found.setting("negative_prompt", parsed.pop("negative_prompt"))
    if (size := parsed.pop("Size", None)) is not None:
        found.size(size)
    if "Denoising strength" in parsed and any(key in parsed for key in _HIRES_KEYS):
        # txt2img with hires fix: this strength belongs to the upscale pass, not to img2img
        found.unknown["Denoising strength"] = parsed.pop("Denoising strength")
    found.fields(parsed, _A1111_FIELDS)
    if scheme == "a1111" or version.startswith("Fooocus"):
        return "fooocus"
    # pngmeta's copy of a recipe whose `imagesynth` chunk was unreadable
    return "imagesynth" if version.startswith("imagesynth") else "a1111"


def _exif_text(raw: Any) -> str | None:
    """Decode an EXIF UserComment/MakerNote: bytes with an 8-byte charset prefix, or a str."""
    if isinstance(raw, bytes) and raw[:8] == b"UNICODE\0":
        body = raw[8:]  # piexif (A1111) writes UTF-16 big-endian: ASCII's zero bytes come first
        big = body[0::2].count(0) >= body[1::2].count(0)
        raw = body.decode("utf-16-be" if big else "utf-16-le", errors="replace")
    elif isinstance(raw, bytes):  # "ASCII\0\0\0", undefined, or no prefix at all
        raw = raw[8:] if raw[:8] in (b"ASCII\0\0\0", b"\0" * 8) else raw
        raw = raw.decode("utf-8", errors="replace")
    return (raw.strip("\0").lstrip("\ufeff") or None) if isinstance(raw, str) else None


def _exif_chunks(image: Image.Image) -> dict[str, str]:
    """The A1111/Fooocus text an EXIF block carries, under the PNG chunk names it would have."""
    try:
        exif = image.getexif()
        ifd = exif.get_ifd(0x8769)  # the Exif sub-IFD, where UserComment belongs
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):  # a damaged EXIF block
        return {}
    chunks = {}
    if comment := _exif_text(ifd.get(0x9286, exif.get(0x9286))):  # UserComment
        chunks[A1111_KEY] = comment
    scheme = _exif_text(ifd.get(0x927C, exif.get(0x927C)))  # Fooocus's scheme, in MakerNote
    if scheme in ("fooocus", "a1111"):
        chunks["fooocus_scheme"] = scheme
    return chunks


_READERS = (("imagesynth", _read_imagesynth), ("invokeai", _read_invokeai),
            ("comfyui", _read_comfyui), ("a1111", _read_parameters))


def read_generation_settings(source: ImageSource) -> ImportedSettings:
    """Read the settings an image was generated with; `source="none"` when it records none.

    Raises InputImageError only when `source` is not a readable PNG/JPEG/WEBP image.
    """
    image = open_image(source, mode=None, field="image")
    text = {str(k): v for k, v in (getattr(image, "text", None) or {}).items()
            if isinstance(v, str)}
    if A1111_KEY not in text:
        text.update(_exif_chunks(image))
    found, source_name, group = _Found(), "none", ()
    for name, reader in _READERS:
        if (result := reader(text, found)) is not None:
            source_name, group = result, _CHUNK_GROUPS[name]
            break
    ignored = sorted(k for k in text if k in _KNOWN_CHUNKS and k not in group
                     and k not in _LEGACY_INVOKEAI and f"{k} chunk" not in found.unknown)
    if ignored and source_name != "none":
        found.unknown["ignored_chunks"] = ignored  # lower precedence than the chunk read
    for key, value in text.items():
        if key in _LEGACY_INVOKEAI:
            found.unknown[f"{key} chunk"] = "InvokeAI 2.x metadata, not read"
        elif key not in _KNOWN_CHUNKS:
            found.unknown[f"{key} chunk"] = value  # e.g. Software, Comment: shown, not dropped
    return ImportedSettings(source_name, found.settings, found.unknown)
