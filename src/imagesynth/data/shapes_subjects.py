"""A ShapesWorld "subject" the data never shows, for DreamBooth: a circle with two-colour stripes.

ShapesWorld objects are one flat colour; this circle has horizontal bands alternating between
two palette colours (period = 1/8 of the canvas, so 4 px at 32 px), drawn with the same
supersampled renderer conventions. `stripe_pattern` tells it apart from pixels alone: the
object's sure pixels must be mostly the two colours, each at least a fifth of them, and its
rows must switch between the colours at least twice going down (three or more bands).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .shapes import (BACKGROUND, MAX_OBJECT_FRACTION, MIN_OBJECT_FRACTION, PALETTE,
                     POSITION_MARGIN, SUPERSAMPLE, ShapeObject, position_holds)
from .shapes_check import CORE_DISTANCE, _border_colour, _to_float_rgb

SUBJECT_COLOURS: tuple[str, str] = ("red", "blue")
#: stripe period as a fraction of the canvas side
STRIPE_PERIOD = 1 / 8
MIN_COLOUR_SHARE = 0.2
MIN_SUBJECT_SHARE = 0.8
MIN_BANDS = 3


def render_striped_circle(obj: ShapeObject, size: int,
                          colours: tuple[str, str] = SUBJECT_COLOURS) -> Image.Image:
    """The circle of `obj` filled with horizontal stripes of two palette colours, anti-aliased."""
    big = size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), BACKGROUND)
    stripes = Image.new("RGB", (big, big), PALETTE[colours[0]])
    draw = ImageDraw.Draw(stripes)
    period = max(2, round(STRIPE_PERIOD * big))
    for top in range(period // 2, big, period):  # every second half-period in colour two
        draw.rectangle((0, top, big - 1, top + period // 2 - 1), fill=PALETTE[colours[1]])
    mask = Image.new("L", (big, big), 0)
    x0, y0, x1, y1 = (round(v * SUPERSAMPLE) for v in obj.box())
    ImageDraw.Draw(mask).ellipse((x0, y0, x1 - 1, y1 - 1), fill=255)
    canvas.paste(stripes, (0, 0), mask)
    return canvas.resize((size, size), Image.BOX)


def sample_subject(rng: np.random.Generator, size: int,
                   position: str | None = None) -> ShapeObject:
    """A circle placed like ShapesWorld places objects, optionally on a named side."""
    side = round(rng.uniform(MIN_OBJECT_FRACTION, MAX_OBJECT_FRACTION) * size * SUPERSAMPLE)
    side /= SUPERSAMPLE
    while True:
        left, top = (round(rng.uniform(1, size - 1 - side) * SUPERSAMPLE) / SUPERSAMPLE
                     for _ in range(2))
        obj = ShapeObject(SUBJECT_COLOURS[0], "circle", left, top, side)
        if position is None or position_holds(obj, position, size, POSITION_MARGIN):
            return obj


@dataclass(frozen=True)
class StripeResult:
    """The pattern test's verdict and the measurements behind it."""

    ok: bool
    shares: tuple[float, float]
    bands: int


def stripe_pattern(image, colours: tuple[str, str] = SUBJECT_COLOURS) -> StripeResult:
    """Whether the image's object is striped in `colours` (see the module docstring)."""
    rgb = _to_float_rgb(image)
    background = _border_colour(rgb)
    core = np.linalg.norm(rgb - background, axis=-1) > CORE_DISTANCE
    if core.sum() == 0:
        return StripeResult(False, (0.0, 0.0), 0)
    names = list(PALETTE)
    palette = np.array([PALETTE[n] for n in names], dtype=np.float64)
    nearest = np.argmin(np.linalg.norm(rgb[..., None, :] - palette, axis=-1), axis=-1)
    first, second = names.index(colours[0]), names.index(colours[1])
    shares = (float((nearest[core] == first).mean()), float((nearest[core] == second).mean()))
    rows = []
    for y in range(rgb.shape[0]):
        in_row = nearest[y][core[y]]
        counts = ((in_row == first).sum(), (in_row == second).sum())
        if max(counts) > 0:
            rows.append(0 if counts[0] >= counts[1] else 1)
    bands = 1 + sum(a != b for a, b in zip(rows, rows[1:])) if rows else 0
    ok = (min(shares) >= MIN_COLOUR_SHARE and sum(shares) >= MIN_SUBJECT_SHARE
          and bands >= MIN_BANDS)
    return StripeResult(ok, shares, bands)
