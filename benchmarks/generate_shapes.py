"""ShapesWorld checker pass rates of a text-to-image model, on held-out and seen colour-shape pairs.

Prompt sets (each prompt generated with seeds 0..S-1, judged by `imagesynth.data.shapes_check`):
- held_out_single: "a COLOUR SHAPE" for the held-out pairs the training data never shows;
- held_out_single_position: the same with "on the left/right/top/bottom";
- held_out_relation: two objects, one of them a held-out pair, in each relation, both orders;
- seen_single: the other colour-shape pairs (what the model was trained on), for comparison.
Prints JSON. Example:  python benchmarks/generate_shapes.py --model shapes --seeds 4
`--sheet FILE` also writes a PNG of `SHEET_PROMPTS` (one row each, seeds 0..S-1, 3× nearest).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import imagesynth
from imagesynth.data.shapes import COLOURS, HELD_OUT_PAIRS, POSITIONS, RELATIONS, SHAPES
from imagesynth.data.shapes_check import check


def relation_prompts(seed: int = 0) -> list[str]:
    """Two-object prompts pairing each held-out pair with a seen pair of another colour and shape."""
    rng = np.random.default_rng(seed)
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]
    prompts = []
    for colour, shape in HELD_OUT_PAIRS:
        for relation in RELATIONS:
            partners = [(c, s) for c, s in seen if c != colour and s != shape]
            other = partners[rng.integers(len(partners))]
            held, partner = f"a {colour} {shape}", f"a {other[0]} {other[1]}"
            prompts += [f"{held} {relation} {partner}", f"{partner} {relation} {held}"]
    return prompts


def prompt_sets() -> dict[str, list[str]]:
    """The named prompt sets of the module docstring."""
    return {
        "held_out_single": [f"a {c} {s}" for c, s in HELD_OUT_PAIRS],
        "held_out_single_position": [f"a {c} {s} on the {p}" for c, s in HELD_OUT_PAIRS
                                     for p in POSITIONS],
        "held_out_relation": relation_prompts(),
        "seen_single": [f"a {c} {s}" for c in COLOURS for s in SHAPES
                        if (c, s) not in HELD_OUT_PAIRS],
    }


#: rows of the `--sheet` image: plain, held-out, position and relation prompts
SHEET_PROMPTS = ("a red circle", "a purple triangle", "an orange circle", "a cyan square",
                 "a green square on the left", "a blue triangle on the top",
                 "a red circle above a blue square", "a yellow square to the left of a black circle")


def write_sheet(pipe, path: str, seeds: int, scale: int = 3, **options) -> None:
    """One row per sheet prompt, one column per seed, each image enlarged `scale` times."""
    from PIL import Image

    rows = [pipe(prompt, seed=0, num_images=seeds, **options).images for prompt in SHEET_PROMPTS]
    side = rows[0][0].width * scale
    sheet = Image.new("RGB", (side * seeds, side * len(rows)), "white")
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            sheet.paste(image.resize((side, side), Image.NEAREST), (c * side, r * side))
    sheet.save(path)


def evaluate(pipe, prompts: list[str], seeds: int, **options) -> dict:
    """Generate every prompt with every seed in batches of one prompt's seeds; check each image."""
    counts = {"ok": 0, "count_ok": 0, "colour_ok": 0, "shape_ok": 0, "position_ok": 0}
    failures: dict[str, int] = {}
    started = time.perf_counter()
    for prompt in prompts:
        result = pipe(prompt, seed=0, num_images=seeds, **options)
        for image in result.images:
            verdict = check(image, prompt)
            for key in counts:
                counts[key] += bool(getattr(verdict, key, False))
            if not verdict.ok:
                failures[prompt] = failures.get(prompt, 0) + 1
    runs = len(prompts) * seeds
    return {"pass_rate": round(counts["ok"] / runs, 3),
            **{f"{k}_rate": round(v / runs, 3) for k, v in counts.items() if k != "ok"},
            "images": runs, "seconds": round(time.perf_counter() - started, 1),
            "failures_per_prompt": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes", help="model name or folder")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (model default)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (model default)")
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--sets", default=",".join(prompt_sets()), help="comma-separated subset")
    parser.add_argument("--sheet", default=None, help="also write a PNG of the sheet prompts")
    args = parser.parse_args()

    pipe = imagesynth.load(args.model)
    options = {"num_steps": args.steps, "guidance_scale": args.guidance, "sampler": args.sampler}
    report: dict = {"benchmark": "generate_shapes", "model": args.model, "seeds": args.seeds,
                    "options": options, "sets": {}}
    sets = prompt_sets()
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        entry = evaluate(pipe, sets[name], args.seeds, **options)
        report["sets"][name] = entry
        print(json.dumps({name: {k: v for k, v in entry.items() if k != "failures_per_prompt"}}),
              file=sys.stderr, flush=True)
    if args.sheet:
        write_sheet(pipe, args.sheet, args.seeds, **options)
        report["sheet"] = args.sheet
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
