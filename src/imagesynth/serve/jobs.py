"""Job kinds the studio runs: each is a typed frozen config, validated like the CLI's flags.

A job body is `{"kind": K, "config": {...}}`. `generate` takes `GenerateConfig` and `dream`
takes `DreamConfig`, the very configs the CLI builds; the other kinds mirror their CLI command's
options. Two rules keep client input away from the file system: image fields hold opaque
references (`upload:ID` or `image:ID`), never paths, and model fields hold names the registry
knows (bundled or added with `imagesynth models add`), never folders or `hf:`/`openclip:` specs.
That covers ControlNet maps (`control_image`) and models (`control_model`) and the CLIP of CLIP
guidance (`clip_model`); only LoRA, whose files have no registry, stays CLI-only.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import from_dict, to_dict
from ..errors import ConfigError
from ..generation import MAX_PROMPT_CHARS, GenerateConfig
from ..guided.loop import DreamConfig
from ..metrics.evaluate import METRICS

REFERENCE = re.compile(r"^(upload|image):([0-9a-f]{32})$")
#: dream image prompts may carry a weight: `upload:ID:0.5`
WEIGHTED_REFERENCE = re.compile(r"^(upload|image):([0-9a-f]{32})(:-?[0-9.]+)?$")
MAX_IMAGE_LIST = 2000


@dataclass(frozen=True)
class ClassifyJob:
    """`imagesynth classify`: rank labels for each image."""

    images: tuple[str, ...] = field(metadata={"help": "Images to classify.", "kind": "images"})
    labels: str = field(metadata={"help": 'Comma-separated labels, e.g. "cat,dog".'})
    templates: tuple[str, ...] = field(default=("{}",), metadata={
        "help": 'Prompt templates with {} for the label; several are ensembled.'})
    model: str | None = field(default=None, metadata={"help": "CLIP model (default emoji-clip)."})
    top: int = field(default=5, metadata={"help": "Labels to show per image."})

    def __post_init__(self):
        if not self.images:
            raise ConfigError("no images given", field="images", fix="upload at least one image")
        if not self.labels.strip():
            raise ConfigError("no labels given", field="labels", fix='e.g. "cat,dog"')
        if not 1 <= self.top <= 100:
            raise ConfigError(f"must be between 1 and 100, got {self.top}", field="top")


@dataclass(frozen=True)
class SearchJob:
    """`imagesynth search` over an index of the studio's own gallery (updated first)."""

    query: str | None = field(default=None, metadata={"help": "Text query."})
    image: str | None = field(default=None, metadata={"help": "Query by this image instead.",
                                                       "kind": "image"})
    model: str | None = field(default=None, metadata={
        "help": "CLIP model for a new index (default emoji-clip); an index keeps its own."})
    top: int = field(default=10, metadata={"help": "Number of results."})

    def __post_init__(self):
        if (self.query is None or not self.query.strip()) == (self.image is None):
            raise ConfigError("give either a text query or an image, not both or neither",
                              field="query", fix='e.g. "a red circle"')
        if self.query is not None and len(self.query) > MAX_PROMPT_CHARS:
            raise ConfigError("is too long", field="query", fix="shorten the query")
        if not 1 <= self.top <= 200:
            raise ConfigError(f"must be between 1 and 200, got {self.top}", field="top")


@dataclass(frozen=True)
class EvaluateJob:
    """`imagesynth evaluate` between two sets of images (uploaded folders or gallery images)."""

    generated: tuple[str, ...] = field(metadata={"help": "Generated images.", "kind": "images"})
    reference: tuple[str, ...] = field(metadata={"help": "Reference (real) images.",
                                                 "kind": "images"})
    metrics: str = field(default="fd,kid,pr,dc", metadata={
        "help": f"Comma list from {','.join(METRICS)}."})
    extractor: str = field(default="inception", metadata={
        "help": "Feature extractor: inception (needs its local weights), or clip:MODEL."})
    kid_subset_size: int = field(default=1000, metadata={
        "help": "KID subset size (capped at the set size)."})
    kid_subsets: int = field(default=100, metadata={"help": "Number of KID subsets."})
    seed: int = field(default=2020, metadata={"help": "Seed for KID subsets."})
    batch_size: int = field(default=32, metadata={"help": "Images per extractor batch."})

    def __post_init__(self):
        for name in ("generated", "reference"):
            if len(getattr(self, name)) < 2:
                raise ConfigError("needs at least 2 images", field=name,
                                  fix="choose a folder with more images")
        if not 1 <= self.batch_size <= 512:
            raise ConfigError(f"must be between 1 and 512, got {self.batch_size}",
                              field="batch_size")

    def metric_names(self) -> tuple[str, ...]:
        """The metrics list as a tuple."""
        return tuple(m.strip() for m in self.metrics.split(",") if m.strip())


@dataclass(frozen=True)
class ReproduceJob:
    """`imagesynth reproduce`: regenerate a gallery image from its recipe and compare pixels."""

    image: str = field(metadata={"help": "The gallery image.", "kind": "image"})
    init_image: str | None = field(default=None, metadata={
        "help": "The init image, when the recipe used one.", "kind": "image"})
    mask: str | None = field(default=None, metadata={
        "help": "The mask, when the recipe used one.", "kind": "image"})
    control_image: tuple[str, ...] = field(default=(), metadata={
        "help": "The ControlNet maps, in the recipe's order, when it used any.",
        "kind": "images"})


KINDS: dict[str, type] = {"generate": GenerateConfig, "dream": DreamConfig,
                          "classify": ClassifyJob, "search": SearchJob,
                          "evaluate": EvaluateJob, "reproduce": ReproduceJob}
#: config fields that name models, per kind (checked against the registry); a tuple-valued
#: field (`control_model`) names one model per entry
MODEL_FIELDS = {"generate": ("model", "control_model", "clip_model"),
                "dream": ("scorer", "held_out_scorer", "decoder", "diffusion_model", "gan"),
                "classify": ("model",), "search": ("model",)}
#: the registry families a model field may name, where a wrong one would only fail in the
#: worker; "unknown": a diffusers ControlNet folder (for Stable Diffusion models) registered with
#: `imagesynth models add` has no family of ours
MODEL_FAMILIES = {"generate": {"control_model": ("controlnet", "unknown"),
                               "clip_model": ("clip",)}}
#: config fields that hold image references, per kind
IMAGE_FIELDS = {"generate": ("init_image", "mask"), "dream": ("init_image",),
                "search": ("image",), "reproduce": ("image", "init_image", "mask")}
LIST_IMAGE_FIELDS = {"generate": ("control_image",), "classify": ("images",),
                     "evaluate": ("generated", "reference"), "dream": ("image_prompts",),
                     "reproduce": ("control_image",)}


def _extra_choices() -> dict[str, dict[str, tuple[str, ...]]]:
    """Choices of fields whose dataclass carries no metadata (the page renders them as selects)."""
    from ..guided.diffusion_drawer import SAMPLERS
    from ..guided.drawers import DRAWERS
    from ..guided.gan_drawer import GAN_LATENTS, GAN_STARTS
    from ..guided.loop import LR_SCHEDULES

    return {"dream": {"drawer": DRAWERS, "lr_schedule": LR_SCHEDULES,
                      "diffusion_sampler": tuple(SAMPLERS), "gan_latent": GAN_LATENTS,
                      "gan_start": GAN_STARTS}}


def parse_job(body: Any, known_models: Mapping[str, str] | set[str]) -> tuple[str, Any]:
    """Validate a job body into (kind, typed config); ConfigError names the field at fault.

    `known_models` holds the names a job may use; a mapping of name to family also lets
    `MODEL_FAMILIES` refuse, say, a diffusion model given as the ControlNet."""
    if not isinstance(body, dict):
        raise ConfigError("the body must be a JSON object", field="body",
                          fix='send {"kind": "generate", "config": {"prompt": "..."}}')
    unknown = sorted(set(body) - {"kind", "config"})
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(unknown)}", field="body",
                          fix="send only kind and config")
    kind = body.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"unknown job kind {kind!r}", field="kind",
                          fix=f"choose one of {', '.join(KINDS)}")
    data = body.get("config", {})
    config = from_dict(KINDS[kind], data if isinstance(data, dict) else None, prefix="")
    check_references(kind, config)
    check_models(kind, config, known_models)
    return kind, config


def check_references(kind: str, config: Any) -> None:
    """Image fields must be `upload:ID` / `image:ID` references: no path reaches the disk."""
    if kind == "generate" and config.lora:  # LoRA fields are file paths, with no registry
        raise ConfigError("the studio does not open LoRA files", field="lora",
                          fix="use `imagesynth generate --lora FILE[:WEIGHT]`")
    for name in IMAGE_FIELDS.get(kind, ()):
        value = getattr(config, name)
        if value is not None and not REFERENCE.match(value):
            raise ConfigError("must be an uploaded image (upload:ID) or a gallery image "
                              "(image:ID)", field=name, fix="upload the file with POST /api/uploads")
    for name in LIST_IMAGE_FIELDS.get(kind, ()):
        values = getattr(config, name)
        if len(values) > MAX_IMAGE_LIST:
            raise ConfigError(f"has {len(values)} images, over {MAX_IMAGE_LIST}", field=name)
        pattern = WEIGHTED_REFERENCE if name == "image_prompts" else REFERENCE
        for i, value in enumerate(values):
            if not pattern.match(value):
                raise ConfigError("must be an uploaded image (upload:ID) or a gallery image "
                                  "(image:ID)", field=f"{name}[{i}]",
                                  fix="upload the file with POST /api/uploads")


def check_models(kind: str, config: Any, known_models: Mapping[str, str] | set[str]) -> None:
    """Model fields must name registered models (the studio never opens a client's path)."""
    families = MODEL_FAMILIES.get(kind, {})
    for name in MODEL_FIELDS.get(kind, ()):
        value = getattr(config, name)
        entries = ([(f"{name}[{i}]", v) for i, v in enumerate(value)]
                   if isinstance(value, tuple) else [(name, value)])
        for where, model in entries:
            if model is None:
                continue
            if model not in known_models:
                raise ConfigError(f"unknown model {model!r}: the studio opens models by "
                                  "registered name only, never by path", field=where,
                                  fix="pick one from GET /api/models (add your own with "
                                      "`imagesynth models add`)")
            family = known_models.get(model) if isinstance(known_models, Mapping) else None
            if name in families and family is not None and family not in families[name]:
                raise ConfigError(f"{model!r} is a {family} model, not a {families[name][0]} "
                                  "model", field=where,
                                  fix=f"pick a {families[name][0]} model from GET /api/models")
    if kind == "evaluate":
        extractor = config.extractor
        if extractor != "inception" and not (extractor.startswith("clip:")
                                             and extractor[5:] in known_models):
            raise ConfigError(f"unknown extractor {extractor!r}", field="extractor",
                              fix="use inception or clip:MODEL with a model from GET /api/models")


def config_json(config: Any) -> dict:
    """The typed config as plain JSON data (tuples become lists)."""
    return to_dict(config)


def rebuild(kind: str, data: dict) -> Any:
    """A stored job's config back as its typed dataclass."""
    return from_dict(KINDS[kind], data)


def _type_name(annotation: Any) -> tuple[str, bool]:
    """('string'|'integer'|'number'|'boolean'|'list'|'tuple4', optional) of an annotation."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        annotation = next(a for a in args if a is not type(None))
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        inner = typing.get_args(annotation)
        return ("tuple4" if len(inner) == 4 and inner[-1] is not Ellipsis else "list"), optional
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(
        annotation, "string"), optional


def schema(cli_help: dict[str, dict[str, str]] | None = None) -> dict:
    """Every kind's fields with type, default and help: the studio builds its forms from this."""
    kinds, extra_choices = {}, _extra_choices()
    for kind, cls in KINDS.items():
        hints = typing.get_type_hints(cls)
        helps = (cli_help or {}).get(kind, {})
        fields = []
        for f in dataclasses.fields(cls):
            type_name, optional = _type_name(hints[f.name])
            required = (f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING)
            default = None if required else (f.default if f.default is not dataclasses.MISSING
                                             else f.default_factory())
            entry = {"name": f.name, "type": type_name, "optional": optional,
                     "required": required,
                     "default": list(default) if isinstance(default, tuple) else default,
                     "help": f.metadata.get("help") or helps.get(f.name, "")}
            for key in ("choices", "kind"):
                if key in f.metadata:
                    entry[key] = list(f.metadata[key]) if key == "choices" else f.metadata[key]
            if f.name in extra_choices.get(kind, {}):
                entry["choices"] = list(extra_choices[kind][f.name])
            if f.name in IMAGE_FIELDS.get(kind, ()):
                entry["kind"] = "image"
            if f.name in LIST_IMAGE_FIELDS.get(kind, ()):
                entry["kind"] = "images"
            if f.name in MODEL_FIELDS.get(kind, ()):
                entry["kind"] = "model"
            if f.name in MODEL_FAMILIES.get(kind, {}):
                entry["families"] = list(MODEL_FAMILIES[kind][f.name])
            fields.append(entry)
        kinds[kind] = {"fields": fields, "help": (cls.__doc__ or "").strip()}
    return {"kinds": kinds}


def dream_cli_help() -> dict[str, str]:
    """Help texts of `imagesynth dream`'s options keyed by DreamConfig field name."""
    import typer.main

    from ..cli import _register, app

    _register()
    command = typer.main.get_command(app)
    dream = command.commands.get("dream") if hasattr(command, "commands") else None
    if dream is None:
        return {}
    renames = {"lr": "learning_rate", "image_prompt": "image_prompts"}
    return {renames.get(p.name, p.name): (p.help or "") for p in dream.params
            if getattr(p, "help", None)}
