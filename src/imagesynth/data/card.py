"""The one on-disk layout every imagesynth data set shares, and its atomic builder.

::

    DIR/
      images/          PNG files
      captions.jsonl   one JSON object per image: file (relative path), caption, captions
                       (alternatives), split ("train"/"val"), plus per-source fields
      DATASET.md       provenance: command, parameters, counts, licences; written last

A folder is built under a hidden temporary name beside DIR and renamed into place only once
DATASET.md is written, so an interrupted build never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from ..errors import DataError

CAPTIONS_FILE = "captions.jsonl"
CARD_FILE = "DATASET.md"
IMAGES_DIR = "images"
#: condition maps for ControlNet (`conditions/<kind>/<name>.png`); not training images
CONDITIONS_DIR = "conditions"

#: progress callback: (done, total)
ProgressCallback = Callable[[int, int], None]


def split_for(relative_path: str, val_fraction: float) -> str:
    """Deterministic "train"/"val" from a hash of the path, so adding files never reshuffles."""
    digest = hashlib.sha256(relative_path.replace("\\", "/").encode("utf-8")).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if unit < val_fraction else "train"


@dataclass
class BuildSummary:
    """What a build wrote: where, how many images per split, how long it took, extra counts."""

    out: Path
    count: int
    train: int
    val: int
    seconds: float
    details: dict = field(default_factory=dict)


class DatasetWriter:
    """Write images and caption records into a temporary folder, then publish it atomically."""

    def __init__(self, out: str | Path, val_fraction: float = 0.05):
        self.out = Path(out)
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"must lie in [0, 1), got {val_fraction}", field="val_fraction")
        if self.out.exists() and not self.out.is_dir():
            raise DataError(f"{self.out} exists and is not a folder", field="out",
                            fix="choose another --out")
        if self.out.is_dir() and any(self.out.iterdir()) and not (self.out / CARD_FILE).is_file():
            raise DataError(f"{self.out} is a non-empty folder that is not an imagesynth data set",
                            field="out", fix="choose an empty or new folder for --out")
        self.val_fraction = val_fraction
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-",
                                             dir=self.out.parent))
        (self.staging / IMAGES_DIR).mkdir()
        self._captions = open(self.staging / CAPTIONS_FILE, "w", encoding="utf-8")
        self.started = time.perf_counter()
        self.counts = {"train": 0, "val": 0}

    def add(self, image: Image.Image, name: str, record: dict, split: str | None = None) -> dict:
        """Save `image` as images/<name>.png and append its record (file and split filled in);
        `split` overrides the hashed train/val split (e.g. "test" for benchmark items)."""
        relative = f"{IMAGES_DIR}/{name}.png"
        if "/" in name:
            (self.staging / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(self.staging / relative, format="PNG", compress_level=6)
        split = split or split_for(relative, self.val_fraction)
        self.counts[split] = self.counts.get(split, 0) + 1
        full = {"file": relative, **record, "split": split}
        self._captions.write(json.dumps(full, ensure_ascii=False) + "\n")
        return full

    def finish(self, card_markdown: str, details: dict | None = None) -> BuildSummary:
        """Write DATASET.md, then swap the staging folder into place."""
        self._captions.close()
        (self.staging / CARD_FILE).write_text(card_markdown, encoding="utf-8")
        if self.out.exists():
            # rename the old set aside first so the swap leaves no half-mixed folder
            retired = self.out.parent / f".{self.out.name}.old-{time.time_ns()}"
            self.out.rename(retired)
            self.staging.rename(self.out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            self.staging.rename(self.out)
        return BuildSummary(out=self.out, count=sum(self.counts.values()),
                            train=self.counts["train"], val=self.counts["val"],
                            seconds=time.perf_counter() - self.started, details=details or {})

    def abort(self) -> None:
        """Remove the staging folder (after an error or interruption)."""
        if not self._captions.closed:
            self._captions.close()
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None or self.staging.exists():
            self.abort()


def render_card(title: str, summary: str, *, command: str, parameters: dict, counts: dict,
                sections: dict[str, str]) -> str:
    """DATASET.md text: title, summary, how it was built, counts, then free-form sections."""
    lines = [f"# {title}", "", summary, "", "## How it was built", "", "```", command, "```", "",
             "| parameter | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in parameters.items()]
    lines += ["", "## Counts", "", "| what | count |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in counts.items()]
    lines += ["", "## Layout", "",
              f"`{IMAGES_DIR}/` holds the PNG files; `{CAPTIONS_FILE}` has one JSON object per "
              "image with `file`, `caption` (primary), `captions` (alternatives) and `split` "
              "(`val` when the first 8 bytes of SHA-256(file) / 2^64 fall below the validation "
              "fraction, so adding files never reshuffles the split).", ""]
    for heading, body in sections.items():
        lines += [f"## {heading}", "", body.strip(), ""]
    return "\n".join(lines)
