"""Recordings of an optimisation: an animated GIF (Pillow) or an H.264 MP4 (imageio-ffmpeg)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from PIL import Image

from ..errors import ConfigError, MissingFileError
from ..io.files import atomic_path

VIDEO_REQUIREMENT = "pip install 'imagesynth[video]'"


def save_gif(frames: list[Image.Image], path: str | Path, frame_ms: int = 80) -> Path:
    """Write the optimisation as an animated GIF (Pillow), looping, the last frame held longer."""
    if not frames:
        raise ConfigError("no frames were recorded", field="gif")
    path = Path(path)
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms * 10]
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=durations, loop=0)
    return path


def import_imageio_ffmpeg():
    """The imageio_ffmpeg module (it bundles an ffmpeg binary); a one-line error when absent."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise MissingFileError("writing MP4 needs the imageio-ffmpeg package", field="mp4",
                               fix=VIDEO_REQUIREMENT) from None
    return imageio_ffmpeg


def upscale_factor(width: int, height: int, min_side: int) -> int:
    """The even integer factor that makes the long side >= min_side (yuv420p needs even sides)."""
    factor = max(1, math.ceil(min_side / max(width, height)))
    return factor + factor % 2


class Mp4Writer:
    """Streams frames into an H.264 yuv420p MP4, one at a time, written atomically.

    Frames are upscaled with nearest neighbours by an even factor, so tiny images stay crisp and
    both sides are even. Use as a context manager; the file appears only when it closes cleanly.
    """

    def __init__(self, path: str | Path, fps: int = 12, min_side: int = 256):
        if fps < 1 or min_side < 1:
            raise ConfigError("fps and min_side must be >= 1", field="mp4")
        self._ffmpeg = import_imageio_ffmpeg()  # fail before a long run, not after it
        self.path, self.fps, self.min_side = Path(path), fps, min_side
        self.size: tuple[int, int] | None = None  # (width, height) of the first frame
        self._scaled = (0, 0)  # (width, height) of the encoded frames
        self.count = 0
        self._stack: contextlib.ExitStack | None = None
        self._tmp: Path | None = None
        self._writer = None

    def __enter__(self) -> "Mp4Writer":
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        return self

    def append(self, frame: Image.Image) -> None:
        """Encode one frame; every frame must have the size of the first."""
        if self._tmp is None:
            raise RuntimeError("use Mp4Writer as a context manager")
        frame = frame.convert("RGB")
        if self.size is None:
            self.size = frame.size
            factor = upscale_factor(*frame.size, self.min_side)
            self._scaled = (frame.size[0] * factor, frame.size[1] * factor)
            # The temp file has no .mp4 suffix, so the container is named explicitly.
            self._writer = self._ffmpeg.write_frames(
                str(self._tmp), self._scaled, fps=self.fps, pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p", macro_block_size=2, ffmpeg_log_level="error",
                output_params=["-f", "mp4"])
            self._writer.send(None)  # start ffmpeg
        elif frame.size != self.size:
            raise ConfigError(f"frame {self.count} is {frame.size}, the first was {self.size}",
                              field="mp4")
        self._writer.send(frame.resize(self._scaled, Image.Resampling.NEAREST).tobytes())
        self.count += 1

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if self._writer is not None:
                self._writer.close()  # flushes and waits for ffmpeg
            if error is None and self.count == 0:
                raise ConfigError("no frames were recorded", field="mp4")
        except Exception as exc:
            if error is None:  # otherwise the run's own error is the one worth reporting
                self._stack.__exit__(type(exc), exc, exc.__traceback__)  # removes the temp file
                raise
        self._stack.__exit__(kind, error, traceback)


def save_mp4(frames: list[Image.Image], path: str | Path, fps: int = 12,
             min_side: int = 256) -> Path:
    """Write recorded frames as an H.264 MP4 (see `Mp4Writer`)."""
    with Mp4Writer(path, fps=fps, min_side=min_side) as writer:
        for frame in frames:
            writer.append(frame)
    return Path(path)
