"""Recipes inside PNGs: an A1111-compatible `parameters` chunk plus a full `imagesynth` JSON chunk."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..errors import InputImageError
from .files import atomic_path
from .images import ImageSource, open_image

RECIPE_KEY = "imagesynth"
A1111_KEY = "parameters"
SCHEMA_VERSION = 1
#: refuse recipe chunks above this size (Pillow separately caps decompressed text)
MAX_RECIPE_BYTES = 1 << 20

# A1111's key/value grammar (modules/infotext_utils.py): `Key: value,` with JSON-quoted values.
_A1111_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
# recipe field -> A1111 key, in the order A1111 writes them
_A1111_FIELDS = (("steps", "Steps"), ("sampler", "Sampler"), ("guidance_scale", "CFG scale"),
                 ("seed", "Seed"), ("size", "Size"), ("model_hash", "Model hash"),
                 ("model", "Model"), ("strength", "Denoising strength"))


def _a1111_value(value: Any, field: str = "") -> str:
    if field == "sampler":  # A1111 readers (Civitai, A1111's own PNG Info) know its names
        from .sampler_names import IMAGESYNTH_TO_A1111

        value = IMAGESYNTH_TO_A1111.get(value, value)
    text = f"{value[0]}x{value[1]}" if isinstance(value, (list, tuple)) else str(value)
    # A1111 quotes values that would break its comma-separated grammar.
    return json.dumps(text) if ("," in text or ":" in text or "\n" in text) else text


def a1111_parameters(recipe: Mapping[str, Any]) -> str:
    """Format a recipe as A1111 infotext: prompt, `Negative prompt:` line, key/value line."""
    lines = [str(recipe.get("prompt", ""))]
    if recipe.get("negative_prompt"):
        lines.append(f"Negative prompt: {recipe['negative_prompt']}")
    pairs = [f"{key}: {_a1111_value(recipe[field], field)}" for field, key in _A1111_FIELDS
             if recipe.get(field) is not None]
    pairs.append(f"Version: imagesynth {recipe.get('versions', {}).get('imagesynth', '')}".strip())
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def parse_a1111_parameters(text: str) -> dict[str, Any]:
    """Parse A1111 infotext into {'prompt', 'negative_prompt', <Key>: value, ...}."""
    lines = text.strip().split("\n")
    result: dict[str, Any] = {}
    last = lines[-1] if lines else ""
    pairs = _A1111_PAIR.findall(last)
    if len(pairs) >= 3:  # A1111's own rule for recognising the key/value line
        lines = lines[:-1]
        for key, value in pairs:
            value = value.strip()
            if value.startswith('"') and value.endswith('"'):
                value = json.loads(value)
            result[key.strip()] = value
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result["prompt"] = "\n".join(prompt).strip()
    result["negative_prompt"] = "\n".join(negative).strip()
    return result


def save_png(image: Image.Image, path: str | os.PathLike, recipe: Mapping[str, Any],
             *, include_prompt: bool = True) -> Path:
    """Write `image` atomically as PNG carrying both metadata chunks.

    `include_prompt=False` strips prompts from both chunks for privacy.
    """
    recipe = {"schema": SCHEMA_VERSION, **recipe}
    if not include_prompt:
        recipe = {k: v for k, v in recipe.items() if k not in ("prompt", "negative_prompt")}
    info = PngInfo()
    info.add_text(A1111_KEY, a1111_parameters(recipe))
    info.add_text(RECIPE_KEY, json.dumps(recipe, sort_keys=True, ensure_ascii=False))
    target = Path(path)
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return target


def read_recipe(source: ImageSource) -> dict[str, Any]:
    """Read the imagesynth recipe from a PNG, falling back to parsed A1111 parameters."""
    image = open_image(source, mode=None, field="image")
    text = getattr(image, "text", {}) or {}
    if RECIPE_KEY in text:
        raw = text[RECIPE_KEY]
        if len(raw.encode("utf-8")) > MAX_RECIPE_BYTES:
            raise InputImageError("the imagesynth metadata chunk is over 1 MB", field="image",
                                  fix="this file was not written by imagesynth")
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise InputImageError("the imagesynth metadata chunk is not valid JSON",
                                  field="image", fix="the file's metadata is damaged") from None
    if A1111_KEY in text:
        return {"a1111": parse_a1111_parameters(text[A1111_KEY])}
    raise InputImageError("the image carries no generation recipe", field="image",
                          fix="pass a PNG written by imagesynth (or by an A1111-compatible tool)")
