"""Instruction editing on held-out ShapesWorld triples, judged by the pixel checker, per edit type.

For the first N `test` triples of each edit type (`imagesynth data shapes-edits`; the test split
holds every triple that shows a held-out colour–shape pair plus 5 % by hash), the model edits
the before image by the instruction (seed 0) and the benchmark reports:

- pass: the edited image satisfies the after (target) caption (`shapes_check.check`);
- kept: every before object the edit does not touch is still detected with its colour and shape
  and its centroid within KEEP_TOLERANCE × size of where it was (None for moves, which touch the
  only object);
- the same two figures for the trivial baseline "return the source image unchanged".

Prints JSON. Example:
  python benchmarks/instruct_shapes.py --model runs/instruct-shapes/model --data data/shapes-edits
`--baseline-only` skips the model (no --model needed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from PIL import Image

from imagesynth.data.shapes import Scene
from imagesynth.data.shapes_check import check, detect_objects
from imagesynth.data.shapes_edits import EDIT_TYPES, read_triples

#: an untouched object counts as kept when its centroid moved at most this × the canvas side
KEEP_TOLERANCE = 0.1


def kept_ok(image: Image.Image, record: dict) -> bool | None:
    """Whether every untouched before object is still there (None when the edit touches all)."""
    before = Scene.from_dict(record["before_scene"])
    untouched = [o for i, o in enumerate(before.objects) if i not in record["touched"]]
    if not untouched:
        return None
    detected = detect_objects(image)
    limit = KEEP_TOLERANCE * before.size
    for obj in untouched:
        x, y = obj.centroid
        if not any(d.colour == obj.colour and d.shape == obj.shape
                   and ((d.centroid[0] - x) ** 2 + (d.centroid[1] - y) ** 2) ** 0.5 <= limit
                   for d in detected):
            return False
    return True


def judge(image: Image.Image, record: dict) -> dict:
    """Checker verdicts of one image for one triple."""
    result = check(image, record["after_caption"])
    return {"pass": result.ok, "colour_ok": result.colour_ok, "shape_ok": result.shape_ok,
            "count_ok": result.count_ok, "position_ok": result.position_ok,
            "kept": kept_ok(image, record)}


def summarise(rows: list[dict]) -> dict:
    """Fractions over the rows (kept over the rows where it applies)."""
    def fraction(key):
        values = [r[key] for r in rows if r[key] is not None]
        return round(sum(values) / len(values), 4) if values else None

    return {"n": len(rows), **{key: fraction(key) for key in
                               ("pass", "colour_ok", "shape_ok", "count_ok", "position_ok",
                                "kept")}}


def select(data: Path, per_type: int) -> list[dict]:
    """The first `per_type` test triples of each edit type, in file order."""
    chosen, counts = [], defaultdict(int)
    for record in sorted(read_triples(data, "test"), key=lambda r: r["file"]):
        if counts[record["edit"]] < per_type:
            counts[record["edit"]] += 1
            chosen.append(record)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Instruction model folder (RUN/model).")
    parser.add_argument("--data", default="data/shapes-edits", help="Edit-triple folder.")
    parser.add_argument("--per-type", type=int, default=40, help="Test triples per edit type.")
    parser.add_argument("--steps", type=int, default=None, help="Sampler steps (model default).")
    parser.add_argument("--guidance", type=float, default=None, help="Instruction guidance s_T.")
    parser.add_argument("--image-guidance", type=float, default=None, help="Image guidance s_I.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.baseline_only and not args.model:
        parser.error("--model is required (or --baseline-only)")

    data = Path(args.data)
    records = select(data, args.per_type)
    started = time.perf_counter()
    pipe = None
    if not args.baseline_only:
        import imagesynth.api
        from imagesynth.editing import edit_image

        pipe = imagesynth.api.load(args.model)
    rows, baseline = defaultdict(list), defaultdict(list)
    recipe = None
    for record in records:
        source = Image.open(data / record["source"]).convert("RGB")
        baseline[record["edit"]].append(judge(source, record))
        if pipe is not None:
            result = edit_image(pipe, source, record["instruction"], seed=args.seed,
                                num_steps=args.steps, guidance_scale=args.guidance,
                                image_guidance_scale=args.image_guidance)
            rows[record["edit"]].append({**judge(result.images[0], record),
                                         "held_out_pair": record["held_out_pair"]})
            recipe = result.recipes[0]
    report = {
        "benchmark": "instruct_shapes", "data": str(data), "model": args.model,
        "triples_per_type": args.per_type, "seed": args.seed,
        "settings": None if recipe is None else {
            key: recipe[key] for key in ("steps", "sampler", "guidance_scale",
                                         "image_guidance_scale", "model_hash")},
        "keep_tolerance": KEEP_TOLERANCE,
        "per_type": {edit: {"model": summarise(rows[edit]) if pipe is not None else None,
                            "source_unchanged": summarise(baseline[edit])}
                     for edit in EDIT_TYPES if baseline[edit]},
        "overall": {"model": summarise([r for e in rows for r in rows[e]]) if pipe else None,
                    "source_unchanged": summarise([r for e in baseline for r in baseline[e]])},
    }
    if pipe is not None:
        every = [r for e in rows for r in rows[e]]
        report["overall_by_pair"] = {
            "held_out_pair": summarise([r for r in every if r["held_out_pair"]]),
            "seen_pairs": summarise([r for r in every if not r["held_out_pair"]])}
    report["seconds"] = round(time.perf_counter() - started, 1)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
