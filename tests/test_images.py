"""Bounded image decoding: bombs, truncated files and foreign formats are refused quickly."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image, ImageFile

from imagesynth.errors import InputImageError
from imagesynth.io.images import image_size, open_image


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height (greyscale) with one tiny compressed row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _encoded(fmt: str, size=(64, 48), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (200, 10, 10) if mode == "RGB" else None).save(buffer, fmt)
    return buffer.getvalue()


def test_decompression_bomb_is_rejected_fast(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring(30000, 30000))
    start = time.perf_counter()
    with pytest.raises(InputImageError, match="bomb|pixel"):
        open_image(path)
    assert time.perf_counter() - start < 1.0  # refused from the header, nothing decoded


def test_image_over_the_project_pixel_cap_is_rejected():
    with pytest.raises(InputImageError, match="pixel"):
        open_image(_png_declaring(9000, 9000))


def test_truncated_jpeg_is_rejected(tmp_path):
    data = _encoded("JPEG", (256, 256))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError, match="truncated|corrupt"):
        open_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "GIF"])
def test_formats_outside_the_allow_list_are_rejected(fmt):
    with pytest.raises(InputImageError, match="PNG, JPEG or WEBP"):
        open_image(_encoded(fmt))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_decode(fmt):
    image = open_image(_encoded(fmt))
    assert image.size == (64, 48) and image.mode == "RGB"
    assert image_size(_encoded(fmt)) == (64, 48)


def test_transparent_png_is_composited_on_white():
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buffer, "PNG")
    assert open_image(buffer.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_garbage_and_missing_files_give_one_line_errors(tmp_path):
    with pytest.raises(InputImageError) as info:
        open_image(b"not an image at all", field="init_image")
    assert info.value.field == "init_image" and "\n" not in info.value.one_line()
    with pytest.raises(InputImageError, match="no such file"):
        open_image(tmp_path / "absent.png")
