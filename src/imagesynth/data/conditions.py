"""Condition maps for ControlNet: layout (from a ShapesWorld scene), edges and scribbles (from pixels).

- **layout**: each object of the scene as a filled mask, drawn exactly as the image draws it
  (same anti-aliasing), coloured by its place in the primary caption: the first object named in
  pure red (255, 0, 0), the second in pure green (0, 255, 0), background black. The code says
  *which* object of the prompt goes where; its colour and shape words still come from the prompt.
- **edges**: Canny (1986) on the luminance: Gaussian blur, Sobel gradient, non-maximum suppression
  along the gradient direction, hysteresis between two thresholds. White edges on black.
- **scribble**: what a person would draw: the image blurred harder, Canny with its own
  thresholds (only main contours survive), edge pieces shorter than a sixteenth of the image side
  dropped, then lines thickened by a disk of radius max(1, side / 64). White on black.

Thresholds are fractions of the largest possible gradient (a black-to-white step), so the maps do
not depend on the image's size beyond the blur radii, which scale with it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import ConfigError
from .card import CONDITIONS_DIR  # noqa: F401 - re-exported for readers of data sets
from .shapes import Scene, object_masks

#: condition names a ControlNet can be trained on
CONDITIONS: tuple[str, ...] = ("layout", "edges", "scribble")
#: conditions written beside the images by `imagesynth data shapes --with-conditions`
DATA_CONDITIONS: tuple[str, ...] = ("layout", "edges")
#: layout code of the first, second (and third) object named in the caption
LAYOUT_CODES: tuple[tuple[int, int, int], ...] = ((255, 0, 0), (0, 255, 0), (0, 0, 255))

#: Canny settings for edge maps: blur sigma at 32 px, thresholds as gradient fractions
EDGE_SIGMA, EDGE_LOW, EDGE_HIGH = 0.6, 0.05, 0.1
#: scribbles: more blur (fewer, smoother contours), short pieces dropped, thick lines
SCRIBBLE_SIGMA, SCRIBBLE_LOW, SCRIBBLE_HIGH = 1.0, 0.04, 0.08
SCRIBBLE_MIN_LENGTH_FRACTION = 1 / 16


def check_condition(name: str) -> str:
    """Return `name` if it is a known condition, else raise a ConfigError naming `condition`."""
    if name not in CONDITIONS:
        raise ConfigError(f"unknown condition {name!r}", field="condition",
                          fix=f"choose one of: {', '.join(CONDITIONS)}")
    return name


def layout_map(scene: Scene, size: int | None = None) -> Image.Image:
    """RGB layout map of a scene: object k's coverage mask times LAYOUT_CODES[k], on black."""
    masks = object_masks(scene, size)
    if len(masks) > len(LAYOUT_CODES):
        raise ConfigError(f"a scene with {len(masks)} objects has no layout code for all of them",
                          field="scene", fix=f"use at most {len(LAYOUT_CODES)} objects")
    codes = np.array(LAYOUT_CODES[:len(masks)], dtype=np.float32)  # [K, 3]
    rgb = np.einsum("khw,kc->hwc", masks, codes)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def _luminance(image: Image.Image) -> np.ndarray:
    """[H, W] float64 luminance in [0, 1] (ITU-R 601, as PIL's "L")."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    return rgb @ np.array([0.299, 0.587, 0.114])


def canny(gray: np.ndarray, sigma: float, low: float, high: float) -> np.ndarray:
    """Canny edges [H, W] bool of a [0, 1] image; `low`/`high` are fractions of a unit step's gradient."""
    if not 0 <= low <= high:
        raise ConfigError(f"thresholds must satisfy 0 <= low <= high, got {low}, {high}",
                          field="threshold")
    smooth = ndimage.gaussian_filter(gray, sigma, mode="nearest") if sigma > 0 else gray
    # Sobel's gain is 4 for a unit step per pixel, so /4 makes thresholds fractions of a step.
    gx = ndimage.sobel(smooth, axis=1, mode="nearest") / 4
    gy = ndimage.sobel(smooth, axis=0, mode="nearest") / 4
    magnitude = np.hypot(gx, gy)
    # Non-maximum suppression: keep pixels not smaller than both neighbours along the gradient,
    # the direction quantised to 0, 45, 90 or 135 degrees.
    angle = np.rad2deg(np.arctan2(gy, gx)) % 180
    sector = (np.round(angle / 45).astype(int)) % 4
    padded = np.pad(magnitude, 1, mode="constant")
    height, width = magnitude.shape
    offsets = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}  # (dy, dx) along the gradient
    peak = np.zeros_like(magnitude, dtype=bool)
    for index, (dy, dx) in offsets.items():
        forward = padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        backward = padded[1 - dy:1 - dy + height, 1 - dx:1 - dx + width]
        peak |= (sector == index) & (magnitude >= forward) & (magnitude >= backward)
    peak &= magnitude > 0
    weak = peak & (magnitude >= low)
    strong = peak & (magnitude >= high)
    # Hysteresis: keep every 8-connected weak chain that contains a strong pixel.
    labels, count = ndimage.label(weak, structure=np.ones((3, 3)))
    if count == 0:
        return weak
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    return keep[labels]


def _scaled_sigma(base: float, side: int) -> float:
    return base * side / 32


def edge_map(image: Image.Image) -> Image.Image:
    """Canny edge map ("L", white edges on black) of any image."""
    gray = _luminance(image)
    edges = canny(gray, _scaled_sigma(EDGE_SIGMA, min(gray.shape)), EDGE_LOW, EDGE_HIGH)
    return Image.fromarray(edges.astype(np.uint8) * 255, "L")


def scribble_map(image: Image.Image) -> Image.Image:
    """Scribble map ("L", thick white lines on black): simplified main contours of any image."""
    gray = _luminance(image)
    side = min(gray.shape)
    edges = canny(gray, _scaled_sigma(SCRIBBLE_SIGMA, side), SCRIBBLE_LOW, SCRIBBLE_HIGH)
    labels, count = ndimage.label(edges, structure=np.ones((3, 3)))
    if count:
        lengths = np.bincount(labels.ravel())
        long_enough = lengths >= max(2, SCRIBBLE_MIN_LENGTH_FRACTION * side)
        long_enough[0] = False
        edges = long_enough[labels]
    radius = max(1, round(side / 64))
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    thick = ndimage.binary_dilation(edges, structure=x ** 2 + y ** 2 <= radius ** 2)
    return Image.fromarray(thick.astype(np.uint8) * 255, "L")


def control_map(kind: str, image: Image.Image) -> Image.Image:
    """`edges` or `scribble` map of an image (a layout needs a scene, not pixels)."""
    if kind == "edges":
        return edge_map(image)
    if kind == "scribble":
        return scribble_map(image)
    raise ConfigError(f"cannot derive a {kind!r} map from pixels", field="condition",
                      fix="use edges or scribble (layout maps come from `imagesynth data shapes "
                          "--with-conditions`)")
