"""Read any captioned image folder: imagesynth data sets and users' own folders.

Captions come, per image, from the first of:

1. `captions.jsonl` — one JSON object per line with `file` (or `file_name`) and `caption` (or
   `text`), optional `captions` (alternatives); the layout every imagesynth data set uses;
2. `metadata.csv` — columns `file_name` and `text` (or `caption`), as Hugging Face imagefolder;
3. a sidecar `NAME.txt` beside `NAME.png` / `.jpg` / `.jpeg` / `.webp`.

Nothing is decoded up front: indexing reads only caption files and the directory tree, images
are decoded one at a time by `validate()` and by item access. Problems (missing captions,
unreadable or oversized images, captions for absent files) are collected, not raised, unless
`strict=True`. The train/val split hashes each image's relative path (`card.split_for`), so
adding files never moves existing ones between splits.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import DataError, InputImageError, OversizedImageError
from ..io.files import atomic_write_text
from ..io.images import image_size, open_image
from .card import CAPTIONS_FILE, CONDITIONS_DIR, ProgressCallback, split_for

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILE = "metadata.csv"
#: images above this many pixels are reported as oversized (4096×4096)
DEFAULT_MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a folder: the file, a kind, and a readable message."""

    file: str
    kind: str  # "missing_caption" | "unreadable" | "oversized" | "missing_file" | "bad_caption"
    message: str


@dataclass(frozen=True)
class FolderItem:
    """One captioned image: relative path, primary caption, alternatives and split."""

    file: str
    caption: str
    captions: tuple[str, ...]
    split: str
    source: str  # "captions.jsonl" | "metadata.csv" | "txt"


@dataclass
class FolderReport:
    """Counts and problems after indexing (and, if run, validating) a folder."""

    root: str
    images_found: int
    usable: int
    train: int
    val: int
    caption_sources: dict
    problems: list[Problem] = field(default_factory=list)
    validated: bool = False

    def to_dict(self) -> dict:
        """JSON form, e.g. for `imagesynth data folder --out report.json`."""
        data = asdict(self)
        data["problem_counts"] = {}
        for problem in self.problems:
            data["problem_counts"][problem.kind] = data["problem_counts"].get(problem.kind, 0) + 1
        return data


def _clean_caption(value) -> str:
    return " ".join(str(value).split()) if value is not None else ""


class CaptionedImageFolder:
    """A folder of images with captions, usable as a map-style torch Dataset.

    Items are dicts `{"image": float32 tensor (3, H, W) in [-1, 1], "caption": str, "file": str}`
    (values in [-1, 1] because diffusion models are trained on that range); `resolution`
    resizes the short side and centre-crops to a square. `split` selects "train", "val" or all.
    """

    def __init__(self, root: str | os.PathLike, *, resolution: int | None = None,
                 split: str | None = None, val_fraction: float = 0.05, strict: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root} is not a folder", field="root",
                            fix="pass the folder that holds your images")
        if split not in (None, "train", "val"):
            raise DataError(f"must be 'train', 'val' or None, got {split!r}", field="split")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"must lie in [0, 1), got {val_fraction}", field="val_fraction")
        if resolution is not None and resolution < 1:
            raise DataError(f"must be positive, got {resolution}", field="resolution")
        self.resolution, self.split, self.val_fraction = resolution, split, val_fraction
        self.strict, self.max_pixels = strict, max_pixels
        self.problems: list[Problem] = []
        self.validated = False
        self._all_items, self._images_found = self._index()
        self._raise_if_strict()

    # --- indexing --------------------------------------------------------------------------
    def _image_files(self) -> list[str]:
        files = []
        for directory, subdirs, names in os.walk(self.root):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and not (
                d == CONDITIONS_DIR and Path(directory) == self.root))  # maps, not images
            for name in sorted(names):
                if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                    files.append(Path(directory, name).relative_to(self.root).as_posix())
        return files

    def _read_index(self) -> tuple[dict[str, tuple[str, tuple[str, ...]]], str | None]:
        """Captions from captions.jsonl or metadata.csv: {relative file: (caption, alternatives)}."""
        jsonl, csv_path = self.root / CAPTIONS_FILE, self.root / METADATA_FILE
        index: dict[str, tuple[str, tuple[str, ...]]] = {}
        if jsonl.is_file():
            with open(jsonl, encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        file = record.get("file") or record["file_name"]
                        caption = _clean_caption(record.get("caption") or record.get("text"))
                        alternatives = tuple(_clean_caption(c) for c in record.get("captions", ()))
                    except (ValueError, KeyError, AttributeError, TypeError):
                        self.problems.append(Problem(
                            f"{CAPTIONS_FILE}:{number}", "bad_caption",
                            "not a JSON object with 'file' and 'caption'"))
                        continue
                    index[Path(file).as_posix()] = (caption, alternatives or (caption,))
            return index, CAPTIONS_FILE
        if csv_path.is_file():
            with open(csv_path, encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle)
                columns = set(reader.fieldnames or ())
                text_column = "text" if "text" in columns else "caption"
                if "file_name" not in columns or text_column not in columns:
                    raise DataError(f"{csv_path} needs the columns file_name and text",
                                    field="metadata.csv",
                                    fix="rename the columns to file_name,text")
                for row in reader:
                    caption = _clean_caption(row.get(text_column))
                    index[Path(row["file_name"]).as_posix()] = (caption, (caption,))
            return index, METADATA_FILE
        return index, None

    def _index(self) -> tuple[list[FolderItem], int]:
        files = self._image_files()
        index, source = self._read_index()
        present = set(files)
        for missing in sorted(set(index) - present):
            self.problems.append(Problem(missing, "missing_file",
                                         f"{source} names {missing}, which is not in the folder"))
        items = []
        for file in files:
            if file in index and index[file][0]:
                caption, alternatives = index[file]
                item_source = source
            else:
                sidecar = (self.root / file).with_suffix(".txt")
                caption = (_clean_caption(sidecar.read_text(encoding="utf-8", errors="replace"))
                           if sidecar.is_file() else "")
                alternatives, item_source = (caption,), "txt"
            if not caption:
                self.problems.append(Problem(file, "missing_caption",
                                             "no caption in captions.jsonl, metadata.csv "
                                             "or a .txt sidecar"))
                continue
            items.append(FolderItem(file, caption, alternatives,
                                    split_for(file, self.val_fraction), item_source))
        return items, len(files)

    def _raise_if_strict(self) -> None:
        if self.strict and self.problems:
            first = "; ".join(f"{p.file}: {p.message}" for p in self.problems[:3])
            raise DataError(f"{len(self.problems)} problem(s) in {self.root}: {first}",
                            field="folder", fix="fix or remove those files, or drop --strict "
                                                "to skip them")

    # --- validation ------------------------------------------------------------------------
    def validate(self, progress: ProgressCallback | None = None) -> FolderReport:
        """Decode every image once (one at a time); drop and report unreadable/oversized ones."""
        kept = []
        for done, item in enumerate(self._all_items, start=1):
            problem = self._check_image(item.file)
            if problem is None:
                kept.append(item)
            else:
                self.problems.append(problem)
            if progress is not None:
                progress(done, len(self._all_items))
        self._all_items, self.validated = kept, True
        self._raise_if_strict()
        return self.report()

    def _check_image(self, file: str) -> Problem | None:
        path = self.root / file
        try:
            width, height = image_size(path, field=file)
            if width * height > self.max_pixels:
                return Problem(file, "oversized", f"{width}x{height} is over the "
                                                  f"{self.max_pixels}-pixel limit")
            open_image(path, field=file, max_pixels=self.max_pixels)
        except InputImageError as exc:
            kind = "oversized" if isinstance(exc, OversizedImageError) else "unreadable"
            return Problem(file, kind, exc.message)
        return None

    def report(self) -> FolderReport:
        """Counts and problems so far."""
        sources: dict[str, int] = {}
        for item in self._all_items:
            sources[item.source] = sources.get(item.source, 0) + 1
        return FolderReport(
            root=str(self.root), images_found=self._images_found, usable=len(self._all_items),
            train=sum(i.split == "train" for i in self._all_items),
            val=sum(i.split == "val" for i in self._all_items), caption_sources=sources,
            problems=list(self.problems), validated=self.validated)

    # --- access ----------------------------------------------------------------------------
    @property
    def items(self) -> list[FolderItem]:
        """The usable items of the selected split."""
        return [i for i in self._all_items if self.split is None or i.split == self.split]

    def __len__(self) -> int:
        return len(self.items)

    def load_image(self, index: int) -> Image.Image:
        """Decode item `index` as RGB, resized and centre-cropped when `resolution` is set."""
        item = self.items[index]
        image = open_image(self.root / item.file, field=item.file, max_pixels=self.max_pixels)
        return image if self.resolution is None else square_resize(image, self.resolution)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        return {"image": pil_to_tensor(self.load_image(index)), "caption": item.caption,
                "file": item.file}

    def __iter__(self) -> Iterator[dict]:
        for index in range(len(self)):
            yield self[index]

    def write_captions(self, path: str | os.PathLike) -> int:
        """Write the usable items as a normalised captions.jsonl; returns the line count."""
        lines = [json.dumps({"file": i.file, "caption": i.caption, "captions": list(i.captions),
                             "split": i.split}, ensure_ascii=False) for i in self._all_items]
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        return len(lines)


def square_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to `resolution` (Lanczos) and centre-crop to a square."""
    width, height = image.size
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(new_size, Image.LANCZOS, reducing_gap=2.0)
    left, top = (new_size[0] - resolution) // 2, (new_size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def pil_to_tensor(image: Image.Image):
    """RGB PIL image → float32 tensor (3, H, W) in [-1, 1]."""
    import torch  # deferred: building data sets needs no torch, only training does

    array = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3) in [0, 255]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0
