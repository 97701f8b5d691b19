"""Text encoders behind one interface; MiniLM is the offline default."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelNotFoundError
from .base import TextEncoder, TextEncoding, force_offline, validate_texts
from .cache import CachedTextEncoder
from .transformer_encoders import (MINILM_NAME, CLIPTextTowerEncoder, MiniLMEncoder,
                                   MiniLMWordsEncoder)

DEFAULT_TEXT_ENCODER = "minilm"

__all__ = ["TextEncoder", "TextEncoding", "CachedTextEncoder", "MiniLMEncoder",
           "MiniLMWordsEncoder", "CLIPTextTowerEncoder", "load_text_encoder", "force_offline",
           "validate_texts", "DEFAULT_TEXT_ENCODER"]


def load_text_encoder(spec: str = DEFAULT_TEXT_ENCODER, *, max_length: int | None = None,
                      device: str | torch.device = "cpu") -> TextEncoder:
    """Load `minilm` (the bundled package), `minilm+words` (its states plus input embeddings)
    or a local CLIP text-tower / BERT folder by path."""
    if spec.lower() in {"minilm", MINILM_NAME.lower()}:
        return MiniLMEncoder.load(max_length=max_length or 64, device=device)
    if spec.lower() == "minilm+words":
        return MiniLMWordsEncoder.load(max_length=max_length or 64, device=device)
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(f"unknown text encoder {spec!r}", field="text_encoder",
                                 fix="use 'minilm', 'minilm+words' or the path of a local "
                                     "CLIP text model folder")
    config = (folder / "config.json").read_text() if (folder / "config.json").is_file() else ""
    if "clip" in config.lower():
        return CLIPTextTowerEncoder.from_folder(folder, max_length=max_length, device=device)
    return MiniLMEncoder.from_folder(folder, max_length=max_length or 64, device=device)
