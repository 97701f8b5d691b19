"""ShapesWorld edit triples (before image, instruction, after image), correct by construction.

Each triple starts from a ShapesWorld scene and changes it in one of five ways, so the after
scene and its caption are known exactly and the pixel checker can judge an edited image:

- recolour: "make the circle blue" (geometry unchanged);
- reshape: "turn the square into a triangle" (same bounding box and colour);
- move: "move it to the left" (one object, mirrored across the canvas midline);
- add: "add a red square below it" (a second object in the named relation to the first);
- remove: "remove the triangle" (a two-object scene loses one).

The folder is a captioned-image folder (`data/card.py`): `images/NAME.png` is the after image
with the after caption as its `caption`, so any text-to-image trainer can read it too, and
`conditions/source/NAME.png` is the before image (condition files are not training images).
Records add `instruction`, `edit`, `before_caption`, `after_caption`, both scenes, `touched`
(the before-scene objects the edit changes) and a three-way `split`: every triple whose before
or after scene shows a held-out colour–shape pair is `test`; the rest are `test` / `val` /
`train` by a hash of the file name, so adding triples never reshuffles them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import to_dict
from ..errors import ConfigError, DataError
from .card import CONDITIONS_DIR, BuildSummary, DatasetWriter, ProgressCallback, render_card
from .shapes import (COLOURS, HELD_OUT_PAIRS, MIN_CANVAS, OBJECT_GAP, POSITION_MARGIN, POSITIONS,
                     RELATION_MARGIN, RELATIONS, SHAPES, Scene, ShapeObject, _boxes_apart, _place,
                     _sample_object, format_caption, position_holds, relation_holds, render_scene,
                     sample_scene)

EDIT_TYPES: tuple[str, ...] = ("recolour", "reshape", "move", "add", "remove")
#: where the before images live inside the folder (a condition, not a training image)
SOURCE_KIND = "source"
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
_RELATION_WORD = {"to the left of": "to the left of", "to the right of": "to the right of",
                  "above": "above", "below": "below"}


@dataclass(frozen=True)
class EditTriple:
    """One edit: the scenes before and after, the instruction and which objects it touches."""

    edit: str
    instruction: str
    before: Scene
    after: Scene
    #: indices into `before.objects` of the objects the edit changes (or removes)
    touched: tuple[int, ...]

    @property
    def before_caption(self) -> str:
        """The before scene's primary caption."""
        return self.before.caption

    @property
    def after_caption(self) -> str:
        """The target caption an edited image must satisfy."""
        return self.after.caption

    @property
    def held_out_pair(self) -> bool:
        """Whether either scene shows a held-out colour–shape pair."""
        return any((o.colour, o.shape) in HELD_OUT_PAIRS
                   for scene in (self.before, self.after) for o in scene.objects)

    def to_record(self) -> dict:
        """The fields stored in captions.jsonl (besides file, source and split)."""
        return {"caption": self.after_caption, "captions": self.after.alternative_captions(),
                "instruction": self.instruction, "edit": self.edit,
                "before_caption": self.before_caption, "after_caption": self.after_caption,
                "before_scene": self.before.to_dict(), "after_scene": self.after.to_dict(),
                "touched": list(self.touched), "held_out_pair": self.held_out_pair}


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _reference(objects: tuple[ShapeObject, ...], index: int) -> str:
    """"the circle", or "the red circle" when the other object has the same shape."""
    target = objects[index]
    same_shape = any(o.shape == target.shape for i, o in enumerate(objects) if i != index)
    return f"the {target.colour} {target.shape}" if same_shape else f"the {target.shape}"


def _caption_holds(scene: Scene) -> bool:
    """The scene's caption holds with the generator's margins (never borderline)."""
    if len(scene.objects) == 2:
        return relation_holds(*scene.objects, scene.position, RELATION_MARGIN, scene.size)
    if scene.position is None:
        return True
    return position_holds(scene.objects[0], scene.position, scene.size, POSITION_MARGIN)


def _distinct_pairs(objects) -> bool:
    return len({(o.colour, o.shape) for o in objects}) == len(objects)


def _recolour(rng, size) -> EditTriple | None:
    before = sample_scene(rng, size, hold_out=False)
    index = int(rng.integers(len(before.objects)))
    old = before.objects[index]
    colour = _pick(rng, [c for c in COLOURS if c != old.colour])
    objects = tuple(dataclasses.replace(o, colour=colour) if i == index else o
                    for i, o in enumerate(before.objects))
    if not _distinct_pairs(objects):
        return None
    after = Scene(size, objects, before.position)
    if len(objects) == 1:
        templates = ("make it {c}", "make the {s} {c}", "colour the {s} {c}", "turn the {s} {c}")
        text = _pick(rng, templates).format(c=colour, s=old.shape)
    else:
        ref = _reference(before.objects, index)
        templates = ("make {r} {c}", "colour {r} {c}", "turn {r} {c}")
        text = _pick(rng, templates).format(r=ref, c=colour)
    return EditTriple("recolour", text, before, after, (index,))


def _reshape(rng, size) -> EditTriple | None:
    before = sample_scene(rng, size, hold_out=False)
    index = int(rng.integers(len(before.objects)))
    old = before.objects[index]
    shape = _pick(rng, [s for s in SHAPES if s != old.shape])
    objects = tuple(dataclasses.replace(o, shape=shape) if i == index else o
                    for i, o in enumerate(before.objects))
    after = Scene(size, objects, before.position)
    # a triangle's centroid sits lower than a square's: the caption must still hold clearly
    if not _distinct_pairs(objects) or not _caption_holds(after):
        return None
    ref = _reference(before.objects, index)
    templates = ("turn {r} into a {s}", "make {r} a {s}", "change {r} into a {s}",
                 "replace {r} with a {s}")
    return EditTriple("reshape", _pick(rng, templates).format(r=ref, s=shape), before, after,
                      (index,))


def _move(rng, size) -> EditTriple | None:
    before = sample_scene(rng, size, two_object_fraction=0.0, position_fraction=1.0,
                          hold_out=False)
    obj, direction = before.objects[0], OPPOSITE[before.position]
    if direction in ("left", "right"):
        moved = dataclasses.replace(obj, left=size - obj.left - obj.side)
    else:
        moved = dataclasses.replace(obj, top=size - obj.top - obj.side)
    after = Scene(size, (moved,), direction)
    if not _caption_holds(after):
        return None
    templates = ("move it to the {d}", "move the {s} to the {d}", "put the {s} on the {d}")
    return EditTriple("move", _pick(rng, templates).format(d=direction, s=obj.shape), before,
                      after, (0,))


def _add(rng, size) -> EditTriple | None:
    before = sample_scene(rng, size, two_object_fraction=0.0, hold_out=False)
    old = before.objects[0]
    colour, shape, side = _sample_object(rng, size, hold_out=False, exclude=(old.colour, old.shape))
    relation = _pick(rng, RELATIONS)
    gap = max(2.0, OBJECT_GAP * size)
    for _ in range(200):
        new = _place(rng, size, colour, shape, side)
        (x1, y1), (x2, y2) = new.centroid, old.centroid
        horizontal = relation in ("to the left of", "to the right of")
        # captioned along the axis where the centroids are further apart, like sample_scene
        dominant = abs(x1 - x2) >= abs(y1 - y2) if horizontal else abs(y1 - y2) > abs(x1 - x2)
        if dominant and _boxes_apart(new, old, gap) and \
                relation_holds(new, old, relation, RELATION_MARGIN, size):
            break
    else:
        return None
    after = Scene(size, (new, old), relation)
    word = _RELATION_WORD[relation]
    templates = ("add a {c} {s} {w} it", "add a {c} {s} {w} the {o}", "put a {c} {s} {w} it")
    text = _pick(rng, templates).format(c=colour, s=shape, w=word, o=old.shape)
    return EditTriple("add", text, before, after, ())


def _remove(rng, size) -> EditTriple | None:
    before = sample_scene(rng, size, two_object_fraction=1.0, hold_out=False)
    index = int(rng.integers(2))
    kept = before.objects[1 - index]
    after = Scene(size, (kept,), None)
    ref = _reference(before.objects, index)
    text = _pick(rng, ("remove {r}", "delete {r}", "take away {r}")).format(r=ref)
    return EditTriple("remove", text, before, after, (index,))


_MAKERS = {"recolour": _recolour, "reshape": _reshape, "move": _move, "add": _add,
           "remove": _remove}


def sample_edit(rng: np.random.Generator, size: int = 32, edit: str | None = None,
                max_tries: int = 1000) -> EditTriple:
    """Draw one edit triple of type `edit` (random type when None)."""
    if size < MIN_CANVAS:
        raise ConfigError(f"must be at least {MIN_CANVAS}, got {size}", field="size")
    if edit is None:
        edit = _pick(rng, EDIT_TYPES)
    if edit not in _MAKERS:
        raise ConfigError(f"unknown edit type {edit!r}", field="edit",
                          fix=f"choose one of: {', '.join(EDIT_TYPES)}")
    for _ in range(max_tries):
        triple = _MAKERS[edit](rng, size)
        if triple is not None:
            return triple
    raise DataError(f"could not construct a {edit} edit on a {size}px canvas", field="size")


def triple_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for triple `index`: independent of how many triples come before it."""
    return np.random.default_rng([seed, index, 1])


def split_of(name: str, held_out_pair: bool, test_fraction: float, val_fraction: float) -> str:
    """"test" for held-out pairs, else test/val/train by the first 8 bytes of SHA-256(name)."""
    if held_out_pair:
        return "test"
    unit = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2 ** 64
    if unit < test_fraction:
        return "test"
    return "val" if unit < test_fraction + val_fraction else "train"


@dataclass(frozen=True)
class ShapesEditsConfig:
    """Parameters of an edit-triple build; triple i depends only on (seed, i)."""

    count: int = 20_000
    seed: int = 0
    size: int = 32
    test_fraction: float = 0.05
    val_fraction: float = 0.05

    def __post_init__(self):
        if self.size < MIN_CANVAS:
            raise ConfigError(f"must be at least {MIN_CANVAS}, got {self.size}", field="size")
        if self.count < 1:
            raise ConfigError(f"must be at least 1, got {self.count}", field="count")
        for name in ("test_fraction", "val_fraction"):
            if not 0.0 <= getattr(self, name) < 0.5:
                raise ConfigError(f"must lie in [0, 0.5), got {getattr(self, name)}", field=name)


def edit_for_index(config: ShapesEditsConfig, index: int) -> EditTriple:
    """Triple `index` of a build: types cycle so every type gets a fifth of the triples."""
    return sample_edit(triple_rng(config.seed, index), config.size,
                       EDIT_TYPES[index % len(EDIT_TYPES)])


def build_shapes_edits(out: str | Path, config: ShapesEditsConfig = ShapesEditsConfig(),
                       progress: ProgressCallback | None = None) -> BuildSummary:
    """Render `config.count` triples into `out` (images, sources, captions.jsonl, DATASET.md)."""
    counts: Counter = Counter()
    digits = len(str(config.count - 1))
    with DatasetWriter(out, config.val_fraction) as writer:
        for index in range(config.count):
            triple = edit_for_index(config, index)
            name = f"{index:0{digits}d}"
            source = f"{CONDITIONS_DIR}/{SOURCE_KIND}/{name}.png"
            (writer.staging / source).parent.mkdir(parents=True, exist_ok=True)
            render_scene(triple.before).save(writer.staging / source, format="PNG",
                                             compress_level=6)
            split = split_of(name, triple.held_out_pair, config.test_fraction,
                             config.val_fraction)
            writer.add(render_scene(triple.after), name, {**triple.to_record(), "source": source},
                       split=split)
            counts[f"{triple.edit} ({split})"] += 1
            if progress is not None:
                progress(index + 1, config.count)
        table = {"triples": config.count, **dict(sorted(counts.items())),
                 **{split: writer.counts.get(split, 0) for split in ("train", "val", "test")}}
        card = render_card(
            "ShapesWorld edits", "Instruction-editing triples (before image, instruction, after "
            "image) made from ShapesWorld scenes, with both captions and scenes, so an edited "
            "image can be judged by the pixel checker.",
            command=(f"imagesynth data shapes-edits --out {out} --count {config.count} "
                     f"--seed {config.seed} --size {config.size}"),
            parameters=to_dict(config), counts=table,
            sections={"Edits": _EDITS_SPEC.format(
                held_out=", ".join(f"{c} {s}" for c, s in HELD_OUT_PAIRS)),
                "Licence": "Generated by imagesynth; no third-party material. "
                           "Same licence as imagesynth (MIT)."})
        summary = writer.finish(card, details={"counts": dict(counts)})
    return summary


def read_triples(data: str | Path, split: str | None = None) -> list[dict]:
    """The records of an edit folder (optionally one split), with `file` and `source` paths."""
    root = Path(data)
    path = root / "captions.jsonl"
    if not path.is_file():
        raise DataError(f"{root} has no captions.jsonl", field="data",
                        fix="build one with `imagesynth data shapes-edits --out DIR`")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip()]
    if records and "instruction" not in records[0]:
        raise DataError(f"{root} is not an edit-triple folder (records have no instruction)",
                        field="data", fix="build one with `imagesynth data shapes-edits`")
    return [r for r in records if split is None or r["split"] == split]


_EDITS_SPEC = """
Five edit types, cycling by index (a fifth each): recolour ("make the circle blue"), reshape
("turn the square into a triangle", same box and colour), move (a single object captioned on one
side is mirrored across the midline: "move it to the right"), add ("add a red square below it":
a second object in that relation, captioned along its dominant axis) and remove ("remove the
triangle" from a two-object scene). Two objects of a scene always differ in colour or shape;
an object is named by its shape, or colour and shape when both objects share the shape.

Each record of `captions.jsonl`: `file` (after image), `source` (before image, under
`conditions/source/`), `caption` = `after_caption` (what the edited image must show),
`before_caption`, `instruction`, `edit`, `before_scene`, `after_scene`, `touched` (indices of the
before objects the edit changes) and `split`. Every triple that shows a held-out colour–shape pair
({held_out}) in either scene is `test`; the others are `test` (5 %) / `val` (5 %) / `train` by
the first 8 bytes of SHA-256 of the file name.
"""
