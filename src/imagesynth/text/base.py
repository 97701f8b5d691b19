"""The text-encoder interface every conditioning path speaks: token states, pooled vector, mask."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError

#: a hard cap on characters per prompt so a megabyte of text cannot stall the tokenizer
MAX_PROMPT_CHARS = 8192


def force_offline() -> None:
    """Make every Hugging Face library refuse hub calls; weights come only from local files."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from transformers.utils import logging as hf_logging

    # imagesynth shows its own progress; per-tensor loading bars are noise.
    hf_logging.disable_progress_bar()


@dataclass
class TextEncoding:
    """A batch of encoded texts.

    states: [B, T, D] per-token hidden states (zeros past each text's length)
    pooled: [B, P] one vector per text (the encoder's own pooling; P may differ from D)
    mask:   [B, T] bool, True where a real token is
    truncated: indices of texts that were cut to the encoder's max length (surfaced, not hidden)
    """

    states: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor
    truncated: list[int] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "TextEncoding":
        """Move all tensors to `device`."""
        return TextEncoding(self.states.to(device), self.pooled.to(device), self.mask.to(device),
                            list(self.truncated))

    def __len__(self) -> int:
        return self.states.shape[0]


class TextEncoder(abc.ABC):
    """A frozen text encoder returning per-token states, a pooled vector and a mask."""

    #: short name recorded in model configs and image metadata
    name: str
    #: width of per-token states (D) and of the pooled vector (P)
    state_dim: int
    pooled_dim: int
    #: tokens per text, including special tokens; longer texts are truncated
    max_length: int

    @abc.abstractmethod
    def encode(self, texts: list[str]) -> TextEncoding:
        """Encode a batch of texts (padded to `max_length`)."""

    @abc.abstractmethod
    def identity(self) -> str:
        """A hash of everything that determines the outputs (weights, tokenizer, max length)."""

    def __call__(self, texts: list[str] | str) -> TextEncoding:
        """Validate, then encode; a single string is a batch of one."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        return self.encode(validate_texts(batch))


def validate_texts(texts: list[str], field_name: str = "prompt") -> list[str]:
    """Reject non-strings and oversized prompts before any tokenizer sees them."""
    if not texts:
        raise ConfigError("no text given", field=field_name, fix="pass at least one prompt")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"item {i} is {type(text).__name__}, not text", field=field_name)
        if len(text) > MAX_PROMPT_CHARS:
            raise ConfigError(f"item {i} has {len(text)} characters, over the "
                              f"{MAX_PROMPT_CHARS}-character limit", field=field_name,
                              fix="shorten the prompt")
    return texts
