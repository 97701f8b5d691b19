"""Ground-truth checker for ShapesWorld: does an image satisfy a caption? Pixels only, no learning.

Pipeline (all thresholds are fractions of the image, so any canvas size >= 16 works):

1. background = median colour of the outermost pixel ring; foreground = pixels further than
   `FOREGROUND_DISTANCE` from it (RGB Euclidean); objects = 8-connected components of the
   surer `CORE_DISTANCE` pixels (`scipy.ndimage.label`), each foreground pixel joining its
   nearest one; components under `MIN_AREA_FRACTION` of the canvas are noise.
2. colour = the `PALETTE` entry whose mixing line (background → colour) passes closest to the
   component's pixels (RMS), so pale anti-aliased or blurred edges, which are mixtures with the
   background, count for their colour instead of pulling orange towards yellow.
3. coverage alpha = distance from background / distance of the palette colour from background,
   which makes area, extent and centroid sub-pixel accurate.
4. shape from the fill ratio area / (width · height) — circle π/4, square 1, triangle 1/2 — and,
   for triangles, that the row widths grow downwards (the spec's triangles point up).
5. positions and relations from the coverage-weighted centroids, with the spec's definitions
   (see `imagesynth.data.shapes`).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import UsageError
from .shapes import PALETTE, CaptionSpec, parse_caption

FOREGROUND_DISTANCE = 60.0
#: pixels this far from the background are surely inside an object (every palette colour is
#: at least 230 from white): they seed the components
CORE_DISTANCE = 110.0
MIN_AREA_FRACTION = 0.008
#: vertical skewness below which a shape is an upward triangle (ideal −0.566, others 0)
TRIANGLE_MAX_SKEWNESS = -0.28
#: fill ratio at and above which a non-triangle is a square (ideal 1) rather than a circle (π/4)
SQUARE_MIN_FILL = 0.89

_PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[name] for name in _PALETTE_NAMES], dtype=np.float64)


@dataclass(frozen=True)
class DetectedObject:
    """One foreground component: its classified colour and shape plus the measurements behind them."""

    colour: str
    shape: str
    centroid: tuple[float, float]
    area: float
    fill_ratio: float
    skewness: float
    colour_distance: float


@dataclass(frozen=True)
class CheckResult:
    """Per-attribute verdicts for one image and caption; `ok` is their conjunction."""

    caption: str
    ok: bool
    count_ok: bool
    colour_ok: bool
    shape_ok: bool
    #: None when the caption names no position or relation
    position_ok: bool | None
    expected_count: int
    detected: tuple[DetectedObject, ...] = field(default_factory=tuple)
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """JSON form (for reports and the evaluation CLI)."""
        return asdict(self)


def _to_float_rgb(image) -> np.ndarray:
    """HxWx3 float64 array on a 0-255 scale from a PIL image or a uint8 / [0, 1] float array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise UsageError(f"expected an HxWx3 image, got shape {array.shape}", field="image",
                         fix="pass a PIL image or an HxWx3 array")
    array = array[..., :3]
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0
    return array.astype(np.float64)


def _border_colour(rgb: np.ndarray) -> np.ndarray:
    ring = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    return np.median(ring, axis=0)


def _mixing_residuals(offsets: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """RMS distance of pixels from each colour's mixing line background→colour.

    offsets: (N, 3) pixels minus background; directions: (K, 3) palette minus background.
    An anti-aliased or blurred pixel is alpha·colour + (1−alpha)·background, so it lies on its
    colour's line even where it is pale; returns (K,) RMS residuals.
    """
    alpha = np.clip(offsets @ directions.T / (directions ** 2).sum(axis=1), 0.0, 1.0)  # (N, K)
    mixed = alpha[:, :, None] * directions[None]  # (N, K, 3)
    return np.sqrt(((offsets[:, None, :] - mixed) ** 2).sum(axis=-1).mean(axis=0))


def _vertical_skewness(alpha: np.ndarray) -> float:
    """Third standardised moment of the coverage along y: 0 for symmetric shapes, 2√2/5·(−1)
    ≈ −0.566 for an upward triangle (its mass sits low); a symmetric blur only shrinks it."""
    rows = alpha.sum(axis=1)
    y = np.arange(len(rows), dtype=np.float64)
    mass = rows.sum()
    mean = (rows * y).sum() / mass
    variance = (rows * (y - mean) ** 2).sum() / mass
    if variance < 1e-9:
        return 0.0
    return float((rows * (y - mean) ** 3).sum() / mass / variance ** 1.5)


def _classify_shape(fill_ratio: float, skewness: float) -> str:
    if skewness < TRIANGLE_MAX_SKEWNESS:
        return "triangle"
    return "square" if fill_ratio >= SQUARE_MIN_FILL else "circle"


def _segment(distance: np.ndarray) -> np.ndarray:
    """Label objects: 8-connected cores (distance > CORE_DISTANCE) seed the components, and each
    fainter foreground pixel joins its nearest core, so a blurred bridge between two close
    objects does not merge them."""
    cores, _ = ndimage.label(distance > CORE_DISTANCE, structure=np.ones((3, 3)))
    if cores.max() == 0:
        return cores
    _, (rows, cols) = ndimage.distance_transform_edt(cores == 0, return_indices=True)
    return np.where(distance > FOREGROUND_DISTANCE, cores[rows, cols], 0)


def detect_objects(image) -> list[DetectedObject]:
    """Find and classify the filled shapes in an image, largest first."""
    return _detect(_to_float_rgb(image))


def _detect(rgb: np.ndarray) -> list[DetectedObject]:
    """`detect_objects` on an HxWx3 float array on a 0-255 scale."""
    height, width = rgb.shape[:2]
    background = _border_colour(rgb)
    distance = np.linalg.norm(rgb - background, axis=-1)  # (H, W)
    labels = _segment(distance)
    min_pixels = MIN_AREA_FRACTION * height * width
    objects = []
    for index, slices in enumerate(ndimage.find_objects(labels), start=1):
        component = labels == index
        if component.sum() < min_pixels:
            continue
        residuals = _mixing_residuals(rgb[component] - background, _PALETTE_RGB - background)
        best = int(np.argmin(residuals))
        # faint edge pixels below the foreground threshold still carry coverage
        region = ndimage.binary_dilation(component) & ((labels == 0) | component)
        full = max(float(np.linalg.norm(_PALETTE_RGB[best] - background)), 1.0)
        alpha = np.where(region, np.clip(distance / full, 0.0, 1.0), 0.0)
        area = float(alpha.sum())
        ys, xs = np.mgrid[0:height, 0:width]
        centroid = (float((alpha * (xs + 0.5)).sum() / area),
                    float((alpha * (ys + 0.5)).sum() / area))
        extent_x = float(alpha.max(axis=0).sum())
        extent_y = float(alpha.max(axis=1).sum())
        fill_ratio = area / max(extent_x * extent_y, 1e-9)
        skewness = _vertical_skewness(alpha)
        objects.append(DetectedObject(
            colour=_PALETTE_NAMES[best], shape=_classify_shape(fill_ratio, skewness),
            centroid=centroid, area=area, fill_ratio=fill_ratio, skewness=skewness,
            colour_distance=float(residuals[best])))
    objects.sort(key=lambda obj: -obj.area)
    return objects


def _position_ok(obj: DetectedObject, position: str, width: int, height: int) -> bool:
    x, y = obj.centroid
    return {"left": x < width / 2, "right": x > width / 2,
            "top": y < height / 2, "bottom": y > height / 2}[position]


def _relation_ok(first: DetectedObject, second: DetectedObject, relation: str) -> bool:
    (x1, y1), (x2, y2) = first.centroid, second.centroid
    return {"to the left of": x1 < x2, "to the right of": x1 > x2,
            "above": y1 < y2, "below": y1 > y2}[relation]


def _best_assignment(spec: CaptionSpec,
                     detected: list[DetectedObject]) -> tuple[DetectedObject, ...]:
    """Distinct detected objects for the caption's objects, maximising colour+shape matches."""
    candidates = detected[:4]  # the largest few; anything smaller is debris
    best, best_score = (), -1
    for chosen in itertools.permutations(candidates, min(len(spec.objects), len(candidates))):
        score = sum((obj.colour == colour) + (obj.shape == shape)
                    for obj, (colour, shape) in zip(chosen, spec.objects))
        if score > best_score:
            best, best_score = chosen, score
    return best


def check(image, caption: str) -> CheckResult:
    """Decide from the pixels alone whether `image` satisfies a ShapesWorld `caption`."""
    spec = parse_caption(caption)
    rgb = _to_float_rgb(image)
    height, width = rgb.shape[:2]
    detected = _detect(rgb)
    reasons = []
    count_ok = len(detected) == len(spec.objects)
    if not count_ok:
        reasons.append(f"expected {len(spec.objects)} object(s), found {len(detected)}")
    chosen = _best_assignment(spec, detected)
    colour_ok = len(chosen) == len(spec.objects)
    shape_ok = colour_ok
    for obj, (colour, shape) in zip(chosen, spec.objects):
        if obj.colour != colour:
            colour_ok = False
            reasons.append(f"expected a {colour} object, found {obj.colour}")
        if obj.shape != shape:
            shape_ok = False
            reasons.append(f"expected a {shape}, found a {obj.shape} "
                           f"(fill ratio {obj.fill_ratio:.2f})")
    position_ok = None
    if spec.position is not None:
        if len(spec.objects) == 1:
            position_ok = bool(chosen) and _position_ok(chosen[0], spec.position, width, height)
        else:
            position_ok = len(chosen) == 2 and _relation_ok(chosen[0], chosen[1], spec.position)
        if not position_ok:
            reasons.append(f"'{spec.position}' does not hold for the object centroids")
    ok = count_ok and colour_ok and shape_ok and position_ok is not False
    return CheckResult(caption=caption, ok=ok, count_ok=count_ok, colour_ok=colour_ok,
                       shape_ok=shape_ok, position_ok=position_ok,
                       expected_count=len(spec.objects), detected=tuple(detected),
                       reasons=tuple(reasons))
