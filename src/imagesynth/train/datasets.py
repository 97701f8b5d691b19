"""What every family's training reads: a folder's images as uint8 tensors, caption tables, grids.

Shared by the objectives in `families/` so each family holds only what is its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.folder import CaptionedImageFolder
from ..errors import DataError


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 (rounded)."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_signed(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 -> [-1, 1] floats."""
    return images_u8.float() / 127.5 - 1


def images_as_uint8(folder: CaptionedImageFolder) -> torch.Tensor:
    """All images of a folder as uint8 [N,3,H,W] (a quarter of the float32 memory)."""
    if len(folder) == 0:
        raise DataError(f"{folder.root} has no usable images for this split", field="data",
                        fix="check the folder with `imagesynth data folder`")
    return torch.stack([to_uint8(folder[i]["image"]) for i in range(len(folder))])


class ImageTensorSet(torch.utils.data.Dataset):
    """A folder's images as one uint8 tensor [N, 3, R, R] kept in memory."""

    def __init__(self, folder: CaptionedImageFolder):
        self.images = images_as_uint8(folder)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def spread_subset(images: torch.Tensor, count: int) -> torch.Tensor:
    """At most `count` rows evenly spaced over the whole set (folders sort by source/style)."""
    if len(images) <= count:
        return images
    return images[torch.linspace(0, len(images) - 1, count).round().long()]


def caption_options(item) -> list[str]:
    """All captions of a folder item, the main one first, without duplicates."""
    return list(dict.fromkeys([item.caption, *item.captions]))


def caption_choice_table(items, index: dict[str, int]) -> torch.Tensor:
    """[N, K] caption rows per item (-1 pads items with fewer alternatives)."""
    width = max(len(caption_options(item)) for item in items)
    table = torch.full((len(items), width), -1, dtype=torch.long)
    for i, item in enumerate(items):
        rows = [index[c] for c in caption_options(item)]
        table[i, :len(rows)] = torch.tensor(rows)
    return table


class CaptionedTrainingSet(torch.utils.data.Dataset):
    """Training samples (uint8 images or float latents, kept in memory) with caption indices."""

    def __init__(self, samples: torch.Tensor, caption_choices: torch.Tensor):
        self.samples = samples
        self.caption_choices = caption_choices

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return self.samples[index], self.caption_choices[index]


@dataclass
class TextTable:
    """Token states of every distinct caption, padded to one length: the model's conditioning."""

    states: torch.Tensor  # [N, T, D]
    mask: torch.Tensor  # [N, T] float, 1 = real token
    index: dict[str, int]
    empty: int  # row of "" (the unconditional branch)


def encode_caption_table(encoder, captions: list[str], batch_size: int = 256) -> TextTable:
    """Encode `captions` plus "" once; pad every row to the longest real token count."""
    texts = list(dict.fromkeys(["", *captions]))
    encodings = [encoder.encode(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    length = max(int(e.mask.sum(1).max()) for e in encodings)
    states = torch.zeros(len(texts), length, encodings[0].states.shape[-1])
    mask = torch.zeros(len(texts), length)
    row = 0
    for encoding in encodings:
        n, t = encoding.states.shape[0], min(length, encoding.states.shape[1])
        states[row:row + n, :t] = encoding.states[:, :t]
        mask[row:row + n, :t] = encoding.mask[:, :t].float()
        row += n
    return TextTable(states, mask, {text: i for i, text in enumerate(texts)}, empty=0)


def save_grid_png(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    """Tile images [N,3,H,W] in [0,1] into one PNG."""
    from PIL import Image

    from ..io.files import atomic_path

    n, _, h, w = images.shape
    columns = min(columns, n)
    rows = (n + columns - 1) // columns
    canvas = torch.ones(3, rows * h, columns * w)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = image
    array = (canvas.permute(1, 2, 0) * 255).round().byte().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
