"""Prompts for CLIP-guided synthesis: weighted text, negatives, image prompts and style presets."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

#: named style suffixes (the "unreal engine trick": words that pull CLIP toward a look)
STYLE_PRESETS: dict[str, str] = {
    "unreal": "unreal engine, highly detailed",
    "artstation": "trending on artstation",
    "pixelart": "pixel art",
    "sketch": "a pencil sketch",
    "watercolour": "a watercolour painting",
    "photo": "a photograph, sharp focus",
    "flat": "flat colours on a plain background",
}


@dataclass(frozen=True)
class WeightedPrompt:
    """One target: a text (or an image path when `is_image`) and its weight (negative pushes away)."""

    text: str
    weight: float = 1.0
    is_image: bool = False


def _split_weight(part: str, field: str) -> tuple[str, float]:
    """'a red apple:1.5' -> ('a red apple', 1.5); a suffix that is not a number stays in the text."""
    text, sep, tail = part.rpartition(":")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            return part.strip(), 1.0
        if not math.isfinite(weight):
            raise ConfigError(f"weight {tail!r} is not a finite number", field=field)
        return text.strip(), weight
    return part.strip(), 1.0


def parse_prompts(prompt: str, image_prompts: list[str] | tuple[str, ...] = (),
                  style: str | None = None) -> list[WeightedPrompt]:
    """Parse "a red apple:1 | blurry:-0.5" plus image prompts ("photo.png:0.5") into targets.

    A style preset's suffix is appended to every positive text prompt. Weights must not sum to 0
    (they are normalised by the absolute value of their sum).
    """
    if style is not None and style not in STYLE_PRESETS:
        raise ConfigError(f"unknown style {style!r}", field="style",
                          fix=f"choose one of {', '.join(STYLE_PRESETS)}")
    targets = []
    for part in prompt.split("|"):
        if not part.strip():
            continue
        text, weight = _split_weight(part, "prompt")
        if not text:
            raise ConfigError(f"{part.strip()!r} has a weight but no text", field="prompt")
        if style is not None and weight > 0:
            text = f"{text}, {STYLE_PRESETS[style]}"
        targets.append(WeightedPrompt(text, weight))
    for part in image_prompts:
        path, weight = _split_weight(part, "image_prompt")
        if not path:
            raise ConfigError(f"{part!r} names no image", field="image_prompt")
        targets.append(WeightedPrompt(path, weight, is_image=True))
    if not targets:
        raise ConfigError("is empty", field="prompt",
                          fix='write what to draw, e.g. "a red circle | blurry:-0.5"')
    total = sum(t.weight for t in targets)
    if abs(total) < 1e-9:
        raise ConfigError("the prompt weights sum to 0, so they cannot be normalised",
                          field="prompt", fix="give the positive prompts more total weight than "
                                              "the negative ones")
    return targets


def normalised_weights(targets: list[WeightedPrompt]) -> list[float]:
    """w_p / |sum w| (Disco Diffusion's normalisation; the sign of each weight is kept)."""
    total = abs(sum(t.weight for t in targets))
    return [t.weight / total for t in targets]
