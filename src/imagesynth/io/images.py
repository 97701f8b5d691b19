"""The one bounded image decoder: format allow-list, pixel cap, truncated files rejected."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageColor, UnidentifiedImageError

from ..errors import ConfigError, InputImageError, OversizedImageError, UnsupportedImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
#: 64 megapixels: far above anything imagesynth makes, far below a decompression bomb
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
#: refuse files above this many bytes before decoding anything
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

ImageSource = str | os.PathLike | bytes | BinaryIO


def _read_bytes(source: ImageSource, max_bytes: int, field: str) -> tuple[bytes, str]:
    """Read the whole source (bounded) and return (bytes, display name)."""
    if isinstance(source, bytes):
        data, name = source, "<bytes>"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise InputImageError(f"no such file {name}", field=field,
                                  fix="check the path")
        if path.stat().st_size > max_bytes:
            raise OversizedImageError(f"{name} is {path.stat().st_size} bytes, over the "
                                  f"{max_bytes}-byte limit", field=field,
                                  fix="use a smaller image")
        data = path.read_bytes()
    else:
        name = getattr(source, "name", "<stream>")
        data = source.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OversizedImageError(f"{name} is over the {max_bytes}-byte limit", field=field,
                              fix="use a smaller image")
    return data, str(name)


def open_image(source: ImageSource, *, mode: str | None = "RGB", field: str = "image",
               max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """Decode an image fully into memory, or raise InputImageError with a one-line reason.

    The pixel cap is checked from the header before any pixel is decoded, so a 30000×30000
    bomb is refused in milliseconds; truncated data raises instead of being padded, and the
    process-global `ImageFile.LOAD_TRUNCATED_IMAGES` is never touched.
    """
    data, name = _read_bytes(source, max_bytes, field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise OversizedImageError(
                    f"{name} is {width}x{height} = {width * height} pixels, over the "
                    f"{max_pixels}-pixel limit", field=field, fix="resize the image first")
            image.load()
    except InputImageError:
        raise
    except UnidentifiedImageError:
        raise UnsupportedImageError(f"{name} is not a readable {'/'.join(ALLOWED_FORMATS)} image",
                              field=field, fix="convert it to PNG, JPEG or WEBP") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise OversizedImageError(f"{name} is a decompression bomb (too many pixels)", field=field,
                              fix="resize the image first") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise InputImageError(f"{name} is {reason} ({exc})", field=field,
                              fix="re-export or re-download the image") from None
    if mode is not None and image.mode != mode:
        image = _convert(image, mode)
    return image


def _convert(image: Image.Image, mode: str) -> Image.Image:
    """Convert modes; transparent images are composited on white rather than on black."""
    if mode == "RGB" and ("A" in image.getbands() or "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert(mode)


def image_size(source: ImageSource, *, field: str = "image",
               max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[int, int]:
    """Read only the header and return (width, height), format-checked."""
    data, name = _read_bytes(source, max_bytes, field)
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UnsupportedImageError(f"{name} is not a readable {'/'.join(ALLOWED_FORMATS)} image",
                              field=field, fix="convert it to PNG, JPEG or WEBP") from None


def parse_colour(text: str, field: str) -> tuple[int, int, int]:
    """An RGB colour (0-255) from a name ("white") or "#RRGGBB"; a bad one names `field`."""
    try:
        return ImageColor.getrgb(text.strip())[:3]
    except ValueError:
        raise ConfigError(f"not a colour: {text!r}", field=field,
                          fix="use a colour name such as white or a hex code like #808080") from None
