"""User-facing error hierarchy: every message names the field at fault and how to fix it."""

from __future__ import annotations


class ImageSynthError(Exception):
    """Base of all errors imagesynth reports to users; the CLI prints one line and exits."""

    #: process exit code the CLI uses (2 = usage error, 1 = runtime error)
    exit_code = 1

    def __init__(self, message: str, *, field: str | None = None, fix: str | None = None):
        self.message = message
        self.field = field
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """Render `field: message (fix: ...)` on a single line."""
        text = f"{self.field}: {self.message}" if self.field else self.message
        if self.fix:
            text = f"{text} — fix: {self.fix}"
        return " ".join(text.split())

    def to_dict(self) -> dict:
        """JSON form for APIs and machine-readable CLI output."""
        return {"error": type(self).__name__, "field": self.field, "message": self.message,
                "fix": self.fix}


class UsageError(ImageSynthError):
    """The user asked for something invalid (a bad flag, value or path)."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration value is missing, of the wrong type or out of range."""


class InputImageError(UsageError):
    """An input image is unreadable, too large, truncated or of a refused format."""


class OversizedImageError(InputImageError):
    """An input image has more pixels or bytes than the decoder allows."""


class UnsupportedImageError(InputImageError):
    """An input file is not an image of an allowed format (PNG, JPEG, WEBP)."""


class DataError(UsageError):
    """A data set folder or caption file is missing or malformed."""


class ModelNotFoundError(UsageError):
    """A model name or path does not resolve to a model folder or file."""


class MissingFileError(UsageError):
    """A local file that imagesynth cannot download (weights, packages) is absent."""


class UnsafeCheckpointError(UsageError):
    """A pickle checkpoint was refused because the user has not trusted that exact file."""


class CheckpointError(ImageSynthError):
    """A weights file is corrupt, truncated, or does not match its declared architecture."""


class IntegrityError(ImageSynthError):
    """A file's SHA-256 no longer matches the hash recorded for it."""


class ExternalToolError(ImageSynthError):
    """An external program (npm) failed or is not installed."""


class NumericError(ImageSynthError):
    """A computation produced NaN/Inf or an otherwise invalid result."""
