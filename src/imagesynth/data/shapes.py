"""ShapesWorld: procedural scenes of one or two coloured shapes with exact captions.

The spec is fixed so outside checks can rely on it:

- square canvas (default 32 px, any size >= 16), white background;
- eight colours (`PALETTE`), three filled shapes (circle, square, upward triangle) whose bounding
  box side is 25-45 % of the canvas side;
- one or two non-overlapping objects, captioned by a small grammar::

      a red circle
      a red circle on the left | right | top | bottom
      a red circle to the left of | to the right of | above | below a blue square

Positions are decided by the object's area centroid (a triangle's sits 2/3 of the way down):
"on the left" means centroid x < size/2, "on the top" centroid y < size/2 (y grows downwards);
"A to the left of B" means x_A < x_B, "A above B" means y_A < y_B. The generator keeps every
decision it captions at least `POSITION_MARGIN` (single objects) or `RELATION_MARGIN` (pairs)
of the canvas side away from its boundary, so its own captions are never borderline.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UsageError

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
    "cyan": (40, 190, 200),
    "black": (20, 20, 20),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")

#: colour–shape pairs the training preset never shows, so generalisation can be measured on them
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("purple", "triangle"), ("orange", "circle"), ("cyan", "square"), ("yellow", "square"))

MIN_CANVAS = 16
#: object bounding-box side as a fraction of the canvas side
MIN_OBJECT_FRACTION, MAX_OBJECT_FRACTION = 0.25, 0.45
#: a captioned position keeps its centroid this far (× size) from the canvas midline
POSITION_MARGIN = 0.08
#: a captioned relation keeps the two centroids this far apart (× size) along its axis
RELATION_MARGIN = 0.12
#: two objects' bounding boxes are at least this far apart (× size, and at least 2 px, which
#: always leaves one whole background pixel between their anti-aliased edges)
OBJECT_GAP = 0.06
#: drawing happens at this multiple of the canvas, then box-filtered down (anti-aliasing)
SUPERSAMPLE = 4

@dataclass(frozen=True)
class ShapeObject:
    """One filled shape: colour and shape names, top-left corner and bounding-box side in px."""

    colour: str
    shape: str
    left: float
    top: float
    side: float

    @property
    def centre(self) -> tuple[float, float]:
        """Bounding-box centre (x, y) in pixels."""
        return (self.left + self.side / 2, self.top + self.side / 2)

    @property
    def centroid(self) -> tuple[float, float]:
        """Area centroid (x, y) in pixels; an upward triangle's lies 2/3 of the way down."""
        fraction_down = 2 / 3 if self.shape == "triangle" else 1 / 2
        return (self.left + self.side / 2, self.top + self.side * fraction_down)

    def box(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in pixels."""
        return (self.left, self.top, self.left + self.side, self.top + self.side)

    def to_dict(self) -> dict:
        """JSON form with derived centre/centroid for downstream consumers."""
        return {"colour": self.colour, "shape": self.shape, "left": self.left, "top": self.top,
                "size": self.side, "centre": list(self.centre), "centroid": list(self.centroid)}


@dataclass(frozen=True)
class Scene:
    """A ShapesWorld scene: canvas size, objects, and which caption form describes it."""

    size: int
    objects: tuple[ShapeObject, ...]
    #: "left"/"right"/"top"/"bottom" for a single object, a RELATIONS entry for two, else None
    position: str | None = None

    @property
    def caption(self) -> str:
        """The primary caption, exactly in the spec's grammar."""
        return format_caption(self.objects, self.position)

    def alternative_captions(self) -> list[str]:
        """Other true captions: the inverse relation, or the caption without its position."""
        if len(self.objects) == 2:
            inverse = {"to the left of": "to the right of", "to the right of": "to the left of",
                       "above": "below", "below": "above"}[self.position]
            return [self.caption, format_caption(self.objects[::-1], inverse)]
        if self.position is not None:
            return [self.caption, format_caption(self.objects, None)]
        return [self.caption]

    def to_dict(self) -> dict:
        """JSON form stored in captions.jsonl."""
        return {"size": self.size, "position": self.position,
                "objects": [obj.to_dict() for obj in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        """Inverse of `to_dict`."""
        objects = tuple(ShapeObject(o["colour"], o["shape"], float(o["left"]), float(o["top"]),
                                    float(o["size"])) for o in data["objects"])
        return cls(size=int(data["size"]), objects=objects, position=data.get("position"))


@dataclass(frozen=True)
class CaptionSpec:
    """A parsed caption: one or two (colour, shape) objects plus an optional position/relation."""

    objects: tuple[tuple[str, str], ...]
    position: str | None = None


def format_caption(objects: Iterable[ShapeObject], position: str | None) -> str:
    """Caption for one object (optionally "on the <side>") or two objects and a relation."""
    objects = tuple(objects)
    first = f"a {objects[0].colour} {objects[0].shape}"
    if len(objects) == 1:
        return first if position is None else f"{first} on the {position}"
    return f"{first} {position} a {objects[1].colour} {objects[1].shape}"


_COLOUR_RE = "|".join(COLOURS)
_SHAPE_RE = "|".join(SHAPES)
_CAPTION_RE = re.compile(
    rf"^an? (?P<c1>{_COLOUR_RE}) (?P<s1>{_SHAPE_RE})"
    rf"(?: on the (?P<pos>left|right|top|bottom)"
    rf"| (?P<rel>to the left of|to the right of|above|below) an? (?P<c2>{_COLOUR_RE}) "
    rf"(?P<s2>{_SHAPE_RE}))?$")


def parse_caption(caption: str) -> CaptionSpec:
    """Parse a caption of the ShapesWorld grammar (case and a final full stop are ignored)."""
    text = " ".join(caption.lower().strip().rstrip(".").split())
    match = _CAPTION_RE.match(text)
    if match is None:
        raise UsageError(
            f"{caption!r} is not a ShapesWorld caption", field="caption",
            fix="use e.g. 'a red circle', 'a red circle on the left' or "
                "'a red circle above a blue square' (colours: " + ", ".join(COLOURS)
                + "; shapes: " + ", ".join(SHAPES) + ")")
    if match["rel"]:
        return CaptionSpec(((match["c1"], match["s1"]), (match["c2"], match["s2"])), match["rel"])
    return CaptionSpec(((match["c1"], match["s1"]),), match["pos"])


def render_scene(scene: Scene, size: int | None = None) -> Image.Image:
    """Draw the scene as an anti-aliased RGB image (`size` rescales the scene's canvas)."""
    size = scene.size if size is None else size
    if size < MIN_CANVAS:
        raise UsageError(f"canvas size must be at least {MIN_CANVAS}, got {size}", field="size")
    scale = SUPERSAMPLE * size / scene.size
    canvas = Image.new("RGB", (size * SUPERSAMPLE,) * 2, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw_object(draw, obj, scale, PALETTE[obj.colour])
    # the box filter averages each SUPERSAMPLE² block, i.e. exact area coverage
    return canvas.resize((size, size), Image.BOX)


def _draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, scale: float, fill) -> None:
    """Draw one filled object at `scale` pixels per scene pixel."""
    x0, y0, x1, y1 = (round(v * scale) for v in obj.box())
    # PIL's shapes include their right/bottom edge pixel, hence the -1
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)


def object_masks(scene: Scene, size: int | None = None) -> np.ndarray:
    """Per-object coverage masks [K, size, size] in [0, 1], drawn exactly as `render_scene` draws."""
    size = scene.size if size is None else size
    scale = SUPERSAMPLE * size / scene.size
    masks = []
    for obj in scene.objects:
        canvas = Image.new("L", (size * SUPERSAMPLE,) * 2, 0)
        _draw_object(ImageDraw.Draw(canvas), obj, scale, 255)
        masks.append(np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255)
    return np.stack(masks) if masks else np.zeros((0, size, size), np.float32)


def _is_held_out(colour: str, shape: str) -> bool:
    return (colour, shape) in HELD_OUT_PAIRS


def _sample_object(rng: np.random.Generator, size: int, hold_out: bool,
                   exclude: tuple[str, str] | None = None) -> tuple[str, str, float]:
    """Draw (colour, shape, side) with the side quantised to the supersampling grid."""
    while True:
        colour = COLOURS[rng.integers(len(COLOURS))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        if (hold_out and _is_held_out(colour, shape)) or (colour, shape) == exclude:
            continue
        side = rng.uniform(MIN_OBJECT_FRACTION, MAX_OBJECT_FRACTION) * size
        return colour, shape, _quantise(side)


def _quantise(value: float) -> float:
    return round(value * SUPERSAMPLE) / SUPERSAMPLE


def _place(rng: np.random.Generator, size: int, colour: str, shape: str,
           side: float) -> ShapeObject:
    """Place an object uniformly with a 1 px border to the canvas edge."""
    left = _quantise(rng.uniform(1, size - 1 - side))
    top = _quantise(rng.uniform(1, size - 1 - side))
    return ShapeObject(colour, shape, left, top, side)


def position_holds(obj: ShapeObject, position: str, size: int, margin: float = 0.0) -> bool:
    """Whether `obj` is on the named side, with its centroid at least margin·size past the midline."""
    x, y = obj.centroid
    middle, band = size / 2, margin * size
    return {"left": x < middle - band, "right": x > middle + band,
            "top": y < middle - band, "bottom": y > middle + band}[position]


def relation_holds(first: ShapeObject, second: ShapeObject, relation: str,
                   margin: float = 0.0, size: int = 1) -> bool:
    """Whether `first` stands in `relation` to `second`, by at least margin·size in centroids."""
    (x1, y1), (x2, y2) = first.centroid, second.centroid
    band = margin * size
    return {"to the left of": x1 < x2 - band, "to the right of": x1 > x2 + band,
            "above": y1 < y2 - band, "below": y1 > y2 + band}[relation]


def _boxes_apart(a: ShapeObject, b: ShapeObject, gap: float) -> bool:
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    return ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0


def sample_scene(rng: np.random.Generator, size: int = 32, *, two_object_fraction: float = 0.5,
                 position_fraction: float = 0.5, hold_out: bool = True,
                 max_tries: int = 1000) -> Scene:
    """Draw a random scene whose caption is unambiguous; `hold_out` skips HELD_OUT_PAIRS.

    One-object scenes carry a position word with probability `position_fraction`; two-object
    scenes always carry the relation along the axis where the centroids are further apart.
    """
    if size < MIN_CANVAS:
        raise UsageError(f"canvas size must be at least {MIN_CANVAS}, got {size}", field="size")
    if not 0.0 <= two_object_fraction <= 1.0:
        raise UsageError(f"must lie in [0, 1], got {two_object_fraction}",
                         field="two_object_fraction")
    gap = max(2.0, OBJECT_GAP * size)
    two_objects = rng.random() < two_object_fraction
    for _ in range(max_tries):
        colour, shape, side = _sample_object(rng, size, hold_out)
        first = _place(rng, size, colour, shape, side)
        if not two_objects:
            if rng.random() >= position_fraction:
                return Scene(size, (first,), None)
            position = POSITIONS[rng.integers(len(POSITIONS))]
            # rejection keeps the placement uniform within the allowed region
            for _ in range(max_tries):
                if position_holds(first, position, size, POSITION_MARGIN):
                    return Scene(size, (first,), position)
                first = _place(rng, size, colour, shape, side)
            continue
        colour2, shape2, side2 = _sample_object(rng, size, hold_out, exclude=(colour, shape))
        second = _place(rng, size, colour2, shape2, side2)
        if not _boxes_apart(first, second, gap):
            continue
        (x1, y1), (x2, y2) = first.centroid, second.centroid
        if abs(x1 - x2) >= abs(y1 - y2):
            relation = "to the left of" if x1 < x2 else "to the right of"
        else:
            relation = "above" if y1 < y2 else "below"
        if relation_holds(first, second, relation, RELATION_MARGIN, size):
            return Scene(size, (first, second), relation)
    raise UsageError(f"could not place objects on a {size}px canvas", field="size",
                     fix=f"use a canvas of at least {MIN_CANVAS} px")


def scene_satisfies(scene: Scene, caption: str | CaptionSpec,
                    ambiguity: float = POSITION_MARGIN / 2) -> bool | None:
    """Ground truth from the scene's geometry: True, False, or None when a position or relation
    the caption names lies within ambiguity·size of its decision boundary."""
    spec = parse_caption(caption) if isinstance(caption, str) else caption
    if len(spec.objects) != len(scene.objects):
        return False
    pairs = [(o.colour, o.shape) for o in scene.objects]
    if len(spec.objects) == 1:
        if spec.objects[0] != pairs[0]:
            return False
        if spec.position is None:
            return True
        obj = scene.objects[0]
        if position_holds(obj, spec.position, scene.size, ambiguity):
            return True
        opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
        return False if position_holds(obj, opposite[spec.position], scene.size, ambiguity) \
            else None
    if sorted(spec.objects) != sorted(pairs):
        return False
    first, second = scene.objects if spec.objects[0] == pairs[0] else scene.objects[::-1]
    if relation_holds(first, second, spec.position, ambiguity, scene.size):
        return True
    if relation_holds(second, first, spec.position, ambiguity, scene.size):
        return False
    return None


def held_out_prompts(include_positions: bool = True) -> list[str]:
    """Evaluation prompts that use only HELD_OUT_PAIRS (never seen by the training preset)."""
    prompts = []
    for colour, shape in HELD_OUT_PAIRS:
        prompts.append(f"a {colour} {shape}")
        if include_positions:
            prompts.extend(f"a {colour} {shape} on the {position}" for position in POSITIONS)
    return prompts


def expected_fill_ratio(shape: str) -> float:
    """Area / bounding-box area of an ideal shape: circle π/4, square 1, triangle 1/2."""
    return {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}[shape]
