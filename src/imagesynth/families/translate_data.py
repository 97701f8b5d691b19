"""The translation family's data: two image domains, paired by a key or not, and a held-out split.

A domain is a folder of images, optionally narrowed to the `captions.jsonl` records whose FIELD
equals VALUE (`style=twitter` picks the Twemoji half of `imagesynth data emoji`). Each image has
a key: its file stem (`images/twitter/1f600.png` -> `1f600`, the same for every emoji style) or
any `captions.jsonl` field (`unified`, `name`). Paired methods (pix2pix) match A and B by key;
CycleGAN never sees the pairing, which is kept only to measure it. The held-out split hashes the
key (not the file path), so an emoji is held out in both styles or in neither.
The built-in tasks derive domain A from domain B: `colorize` (ITU-R 601 luminance, grey -> colour)
and `edges2image` (Canny edge map -> image, as ControlNet's edges).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.card import CAPTIONS_FILE, CONDITIONS_DIR, split_for
from ..data.conditions import edge_map
from ..data.folder import square_resize
from ..errors import ConfigError, DataError
from ..io.images import open_image
from ..metrics.folder_features import list_images

TASKS = ("translate", "colorize", "edges2image")
#: ITU-R 601 luminance weights (PIL's "L", `data.conditions`)
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class DomainImage:
    """One image of a domain: its key, its path, and its captions.jsonl record (if any)."""

    key: str
    path: Path
    record: dict


@dataclass(frozen=True)
class PairedImages:
    """Aligned uint8 image sets [N, 3, S, S]: `a[i]` translates to `b[i]`; `keys[i]` names both."""

    a: torch.Tensor
    b: torch.Tensor
    keys: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class TranslationData:
    """Training and held-out images of both domains.

    Paired data has `train_a[i]` <-> `train_b[i]`; unpaired data keeps the domains separate
    (different lengths allowed). `held_out` holds the held-out pairs (empty if none match).
    """

    train_a: torch.Tensor
    train_b: torch.Tensor
    held_out: PairedImages
    paired: bool
    counts: dict


def parse_select(text: str | None, field: str) -> tuple[str, str] | None:
    """"FIELD=VALUE" -> (FIELD, VALUE); None passes through."""
    if text is None:
        return None
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ConfigError(f"must look like FIELD=VALUE, got {text!r}", field=field,
                          fix="e.g. style=twitter (a field of the folder's captions.jsonl)")
    return name.strip(), value.strip()


def read_domain(folder: str | Path, field: str, pair_by: str = "stem",
                select: str | None = None) -> list[DomainImage]:
    """A domain's images with their keys, sorted by file; one-line errors naming `field`."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{folder} is not a folder", field=field,
                        fix="point it at a folder of images (e.g. from `imagesynth data`)")
    records: dict[str, dict] = {}
    if (root / CAPTIONS_FILE).is_file():
        for number, line in enumerate((root / CAPTIONS_FILE).read_text("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[Path(record.get("file") or record["file_name"]).as_posix()] = record
            except (ValueError, KeyError, AttributeError, TypeError):
                raise DataError(f"{CAPTIONS_FILE} line {number} is not a JSON object with "
                                "'file'", field=field, fix="repair or remove that line") from None
    chosen = parse_select(select, f"select_{field[-1]}")
    images = []
    for path in list_images(root, field):
        relative = path.relative_to(root).as_posix()
        if relative.split("/")[0] == CONDITIONS_DIR:
            continue  # ControlNet condition maps, not images of the domain
        record = records.get(relative, {})
        if chosen and str(record.get(chosen[0])) != chosen[1]:
            continue
        images.append(DomainImage(_key(record, path, pair_by, field), path, record))
    if not images:
        raise DataError(f"{folder} has no images" + (f" with {select}" if select else ""),
                        field=field, fix="check the folder and the selection")
    return images


def _key(record: dict, path: Path, pair_by: str, field: str) -> str:
    if pair_by == "stem":
        return path.stem
    value = record.get(pair_by)
    if value is None or value == "":
        raise ConfigError(f"{path.name} in {field} has no {pair_by!r} in {CAPTIONS_FILE}",
                          field="pair_by", fix="pair by stem, or by a field every record has")
    return str(value)


def _unique(images: list[DomainImage], field: str, pair_by: str) -> dict[str, DomainImage]:
    by_key: dict[str, DomainImage] = {}
    for image in images:
        if image.key in by_key:
            raise ConfigError(f"key {image.key!r} names two images of {field} "
                              f"({by_key[image.key].path.name}, {image.path.name})",
                              field="pair_by", fix="pair by a field that is unique per image, "
                              "or narrow the folder with --select-a/--select-b")
        by_key[image.key] = image
    return by_key


def load_pixels(image: DomainImage, size: int, field: str) -> Image.Image:
    """The image as RGB, resized (short side) and centre-cropped to size x size."""
    return square_resize(open_image(image.path, field=field), size)


def to_tensor_u8(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> uint8 [N, 3, S, S]."""
    return torch.from_numpy(np.stack([np.asarray(i.convert("RGB")) for i in images])
                            ).permute(0, 3, 1, 2).contiguous()


def grey(images_u8: torch.Tensor) -> torch.Tensor:
    """Luminance of uint8 images [N, 3, S, S], repeated on three channels (uint8)."""
    weights = torch.tensor(LUMA, dtype=torch.float64)[None, :, None, None]
    luma = (images_u8.double() * weights).sum(dim=1, keepdim=True).round().clamp(0, 255)
    return luma.to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def edges(images_u8: torch.Tensor) -> torch.Tensor:
    """Canny edge maps (white on black) of uint8 images, on three channels (uint8)."""
    maps = [np.asarray(edge_map(Image.fromarray(image.permute(1, 2, 0).numpy())))
            for image in images_u8]
    return torch.from_numpy(np.stack(maps))[:, None].expand(-1, 3, -1, -1).contiguous()


def task_input(task: str, images_u8: torch.Tensor) -> torch.Tensor:
    """The input side a built-in task makes from target images (uint8 in, uint8 out)."""
    if task == "colorize":
        return grey(images_u8)
    if task == "edges2image":
        return edges(images_u8)
    raise ConfigError(f"task {task!r} has no derived input", field="task",
                      fix="use colorize or edges2image")


def load_translation_data(data_b: str | Path, data_a: str | Path | None, *, task: str,
                          paired: bool, image_size: int, pair_by: str = "stem",
                          select_a: str | None = None, select_b: str | None = None,
                          held_out_fraction: float = 0.1, min_pairs: int = 1
                          ) -> TranslationData:
    """Read, pair (or not), split by key hash and load both domains at `image_size`."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}", field="task", fix=f"use one of {TASKS}")
    b_images = read_domain(data_b, "data_b", pair_by, select_b)
    if task != "translate":
        if data_a is not None:
            raise ConfigError(f"the {task} task makes its inputs from data_b", field="data_a",
                              fix="leave out --data-a")
        b = _load(b_images, image_size, "data_b")  # keys only split: repeats are held out together
        return _split(task_input(task, b), b, [i.key for i in b_images], [i.key for i in b_images],
                      True, held_out_fraction, {"a": len(b_images), "b": len(b_images)})
    if data_a is None:
        raise ConfigError("the translate task needs both domains", field="data_a",
                          fix="pass --data-a (or use --task colorize / edges2image)")
    a_images = read_domain(data_a, "data_a", pair_by, select_a)
    b_keys = {image.key for image in b_images}
    counts = {"a": len(a_images), "b": len(b_images),
              "pairs": len({i.key for i in a_images} & b_keys)}
    if paired:  # unpaired folders may repeat a key: it only ever pairs held-out images
        a_by, b_by = _unique(a_images, "data_a", pair_by), _unique(b_images, "data_b", pair_by)
        common = [key for key in a_by if key in b_by]
        needed = max(min_pairs, (min(len(a_images), len(b_images)) + 1) // 2)
        if len(common) < needed:
            raise ConfigError(f"only {len(common)} of {len(a_images)} data_a images have a "
                              f"data_b image with the same {pair_by} key (pix2pix needs "
                              f"{needed})", field="pair_by",
                              fix="pair by another field (--pair-by), or train unpaired folders "
                                  "with --method cyclegan")
        a_list = [a_by[k] for k in common]
        b_list = [b_by[k] for k in common]
        _check_sizes(a_list, b_list)
        a, b = _load(a_list, image_size, "data_a"), _load(b_list, image_size, "data_b")
        return _split(a, b, common, common, True, held_out_fraction, counts)
    a, b = _load(a_images, image_size, "data_a"), _load(b_images, image_size, "data_b")
    return _split(a, b, [i.key for i in a_images], [i.key for i in b_images], False,
                  held_out_fraction, counts)


def _load(images: list[DomainImage], size: int, field: str) -> torch.Tensor:
    return to_tensor_u8([load_pixels(image, size, field) for image in images])


def _check_sizes(a_list: list[DomainImage], b_list: list[DomainImage]) -> None:
    """Paired images must share their native size: pix2pix pairs are pixel-aligned."""
    from ..io.images import image_size

    for a, b in zip(a_list, b_list):
        size_a, size_b = image_size(a.path, field="data_a"), image_size(b.path, field="data_b")
        if size_a != size_b:
            raise ConfigError(f"{b.path.name} is {size_b[0]}x{size_b[1]} but its pair "
                              f"{a.path.name} in data_a is {size_a[0]}x{size_a[1]}",
                              field="data_b", fix="build both folders at one size "
                              "(e.g. `imagesynth data emoji --size N`)")


def _split(a: torch.Tensor, b: torch.Tensor, keys_a: list[str], keys_b: list[str],
           paired: bool, fraction: float, counts: dict) -> TranslationData:
    held_a = [split_for(k, fraction) == "val" for k in keys_a]
    held_b = [split_for(k, fraction) == "val" for k in keys_b]
    train_a = a[[i for i, h in enumerate(held_a) if not h]]
    train_b = b[[i for i, h in enumerate(held_b) if not h]]
    # held-out pairs: aligned rows when paired, else the keys held out in both domains
    b_row = {k: i for i, (k, h) in enumerate(zip(keys_b, held_b)) if h}
    rows = [(i, i if paired else b_row[k]) for i, (k, h) in enumerate(zip(keys_a, held_a))
            if h and (paired or k in b_row)]
    held_out = PairedImages(a[[i for i, _ in rows]], b[[j for _, j in rows]],
                            tuple(keys_a[i] for i, _ in rows))
    if len(train_a) == 0 or len(train_b) == 0:
        raise ConfigError("no training images are left after the held-out split",
                          field="held_out_fraction", fix="use more images or a smaller fraction")
    counts = {**counts, "train_a": len(train_a), "train_b": len(train_b),
              "held_out_pairs": len(held_out)}
    return TranslationData(train_a, train_b, held_out, paired, counts)


class PairedSet(torch.utils.data.Dataset):
    """Aligned uint8 pairs for the loop: item i is (a[i], b[i])."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, index: int):
        return self.a[index], self.b[index]


class DomainSet(torch.utils.data.Dataset):
    """One domain's uint8 images for the loop (CycleGAN draws the other domain itself)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]
