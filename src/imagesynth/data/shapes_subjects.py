"""ShapesWorld "subjects" the data never shows, for DreamBooth: a striped and a two-tone circle.

ShapesWorld objects are one flat colour. The striped circle has horizontal bands alternating
between two palette colours (period = 1/8 of the canvas, so 4 px at 32 px, near the 32 px
UNet's resolution limit); the two-tone circle is split down its vertical diameter, left half
one colour and right half the other (a low-frequency pattern). Both use the supersampled
renderer's conventions. Pattern tests tell them apart from pixels alone, on the object's sure
pixels (`CORE_DISTANCE` from the background), each matched to a palette colour:
- `stripe_pattern`: mostly the two colours, each at least a fifth, each row mostly one of them
  (row purity ≥ 0.8), and the rows switch between the colours at least twice going down (three
  or more bands);
- `two_tone_pattern`: mostly the two colours, each at least a quarter, and the first colour's
  mean column lies left of the second's by at least a quarter of the object's width (an ideal
  split disc: 0.42; stripes, speckle and a mirrored split: about 0 or below).
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
#: stripes run across the object: each row is mostly one of the two colours (a split or
#: speckled object has rows near half and half)
MIN_ROW_PURITY = 0.8
#: two-tone test: each colour's share of the sure pixels, and the left-right separation of the
#: colours' mean columns as a fraction of the object's width
MIN_TWO_TONE_SHARE = 0.25
MIN_SEPARATION = 0.25


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


def render_two_tone_circle(obj: ShapeObject, size: int,
                           colours: tuple[str, str] = SUBJECT_COLOURS) -> Image.Image:
    """The circle of `obj`, left half `colours[0]` and right half `colours[1]`, anti-aliased."""
    big = size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), BACKGROUND)
    halves = Image.new("RGB", (big, big), PALETTE[colours[0]])
    x0, y0, x1, y1 = (round(v * SUPERSAMPLE) for v in obj.box())
    # the split snaps to a whole output pixel, so no column is a red/blue blend (purple)
    split = round((x0 + x1) / 2 / SUPERSAMPLE) * SUPERSAMPLE
    ImageDraw.Draw(halves).rectangle((split, 0, big - 1, big - 1), fill=PALETTE[colours[1]])
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).ellipse((x0, y0, x1 - 1, y1 - 1), fill=255)
    canvas.paste(halves, (0, 0), mask)
    return canvas.resize((size, size), Image.BOX)


RENDERERS = {"stripes": render_striped_circle, "two-tone": render_two_tone_circle}


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
    #: the rows' majority colour's share of their two-colour pixels, over all such pixels
    row_purity: float


def _mixing_match(rgb: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the palette index whose line background → colour passes closest, and the
    pixel's coverage along it (the checker's colour rule, pixel by pixel)."""
    directions = np.array([PALETTE[n] for n in PALETTE], dtype=np.float64) - background
    offsets = rgb - background
    alpha = np.clip(offsets @ directions.T / (directions ** 2).sum(axis=1), 0.0, 1.0)
    residual = np.linalg.norm(offsets[..., None, :] - alpha[..., None] * directions, axis=-1)
    best = np.argmin(residual, axis=-1)
    return best, np.take_along_axis(alpha, best[..., None], axis=-1)[..., 0]


def _sure_pixels(image, colours: tuple[str, str], mixing: bool = False):
    """The object's sure-pixel mask, each pixel's palette index, the two colours' indices.

    A pixel's colour is the nearest palette entry, or with `mixing` the `_mixing_match` one, so
    a pale anti-aliased red edge counts as red rather than orange.
    """
    rgb = _to_float_rgb(image)
    background = _border_colour(rgb)
    core = np.linalg.norm(rgb - background, axis=-1) > CORE_DISTANCE
    names = list(PALETTE)
    if mixing:
        nearest = _mixing_match(rgb, background)[0]
    else:
        palette = np.array([PALETTE[n] for n in names], dtype=np.float64)
        nearest = np.argmin(np.linalg.norm(rgb[..., None, :] - palette, axis=-1), axis=-1)
    return core, nearest, names.index(colours[0]), names.index(colours[1])


def one_colour_silhouette(image, colours: tuple[str, str] = SUBJECT_COLOURS) -> np.ndarray:
    """The image with `colours[1]` pixels repainted in `colours[0]` at the same coverage (uint8).

    The checker classifies an object by one colour's mixing line; a red|blue object is matched
    to purple or black, and with black's longer line its coverage, and so its fill ratio, comes
    out wrong (a circle read as a square). On the one-colour silhouette the shape, area and
    centroid are measured as for any flat object.
    """
    rgb = _to_float_rgb(image)
    background = _border_colour(rgb)
    best, alpha = _mixing_match(rgb, background)
    second = list(PALETTE).index(colours[1])
    target = np.array(PALETTE[colours[0]], dtype=np.float64)
    repainted = background + alpha[..., None] * (target - background)
    out = np.where((best == second)[..., None], repainted, rgb)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def stripe_pattern(image, colours: tuple[str, str] = SUBJECT_COLOURS) -> StripeResult:
    """Whether the image's object is striped in `colours` (see the module docstring)."""
    core, nearest, first, second = _sure_pixels(image, colours)
    if core.sum() == 0:
        return StripeResult(False, (0.0, 0.0), 0, 0.0)
    shares = (float((nearest[core] == first).mean()), float((nearest[core] == second).mean()))
    rows, majority, total = [], 0, 0
    for y in range(core.shape[0]):
        in_row = nearest[y][core[y]]
        counts = (int((in_row == first).sum()), int((in_row == second).sum()))
        if max(counts) > 0:
            rows.append(0 if counts[0] >= counts[1] else 1)
            majority, total = majority + max(counts), total + sum(counts)
    bands = 1 + sum(a != b for a, b in zip(rows, rows[1:])) if rows else 0
    purity = majority / total if total else 0.0
    ok = (min(shares) >= MIN_COLOUR_SHARE and sum(shares) >= MIN_SUBJECT_SHARE
          and bands >= MIN_BANDS and purity >= MIN_ROW_PURITY)
    return StripeResult(ok, shares, bands, purity)


@dataclass(frozen=True)
class TwoToneResult:
    """The two-tone test's verdict and the measurements behind it."""

    ok: bool
    shares: tuple[float, float]
    #: (mean column of colour two − mean column of colour one) / object width
    separation: float


def two_tone_pattern(image, colours: tuple[str, str] = SUBJECT_COLOURS) -> TwoToneResult:
    """Whether the image's object is `colours[0]` on its left and `colours[1]` on its right."""
    core, nearest, first, second = _sure_pixels(image, colours, mixing=True)
    if core.sum() == 0:
        return TwoToneResult(False, (0.0, 0.0), 0.0)
    shares = (float((nearest[core] == first).mean()), float((nearest[core] == second).mean()))
    if min(shares) == 0:
        return TwoToneResult(False, shares, 0.0)
    columns = np.nonzero(core)[1]
    width = float(columns.max() - columns.min() + 1)
    cols = np.broadcast_to(np.arange(core.shape[1]), core.shape)
    separation = float((cols[core & (nearest == second)].mean()
                        - cols[core & (nearest == first)].mean()) / width)
    ok = (min(shares) >= MIN_TWO_TONE_SHARE and sum(shares) >= MIN_SUBJECT_SHARE
          and separation >= MIN_SEPARATION)
    return TwoToneResult(ok, shares, separation)
