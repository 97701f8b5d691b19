"""ShapesWorld checker pass rates on paraphrased prompts whose words no training caption uses.

Paraphrases come from `imagesynth.text.paraphrase` (colour names from the W3C and XKCD colour
tables labelled by CIELAB distance, a shape thesaurus, other phrasings), test half only; the
benchmark first proves that no test word occurs in the model's training captions. Categories:
- colour: a held-out colour name, the training phrasing ("a crimson circle");
- shape: a held-out shape noun ("a red orb");
- phrasing: a held-out phrasing with the training words ("a circle that is red");
- position: a held-out way to state a side ("left: red circle");
- all: colour, shape and phrasing changed at once.
Each category runs on the seen colour-shape pairs and on the held-out pairs (never in training),
every prompt with seeds 0..S-1, judged against the canonical caption. `--expand` rewrites every
prompt first (`generate --expand`), so both modes are measured on the same prompts and seeds.
Prints JSON. Example:  python benchmarks/paraphrase_shapes.py --model shapes --seeds 4 --expand
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import imagesynth
from imagesynth.data.shapes import COLOURS, HELD_OUT_PAIRS, POSITIONS, SHAPES
from imagesynth.data.shapes_check import check
from imagesynth.text.paraphrase import (POSITION_TEMPLATES, TEMPLATES, check_held_out,
                                        colour_lexicon, paraphrase, shape_lexicon, split_of,
                                        word_splits)

CATEGORIES = ("colour", "shape", "phrasing", "position", "all")


def prompt_sets(per_pair: int = 1, seed: int = 0) -> dict[str, list]:
    """{"<category>/<seen|held_out>": [Paraphrase, ...]} from the test half, fixed by `seed`."""
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]
    sets = {}
    for category in CATEGORIES:
        for name, pairs, repeat in (("seen", seen, per_pair), ("held_out", HELD_OUT_PAIRS,
                                                               2 * per_pair)):
            rng = np.random.default_rng([seed, CATEGORIES.index(category), name == "seen"])
            items = []
            for colour, shape in pairs:
                drawn: dict[str, object] = {}
                for _ in range(20 * repeat):  # distinct paraphrases where the test half has them
                    if category == "position":
                        side = POSITIONS[rng.integers(len(POSITIONS))]
                        item = paraphrase(colour, shape, "phrasing", "test", rng, side)
                    else:
                        item = paraphrase(colour, shape, category, "test", rng)
                    drawn.setdefault(item.text, item)
                    if len(drawn) == repeat:
                        break
                items += list(drawn.values())
            sets[f"{category}/{name}"] = items
    return sets


def test_vocabulary() -> list[str]:
    """The colour and shape names of the test half (none may occur in a training caption)."""
    return sorted(w for lexicon in (colour_lexicon(), shape_lexicon())
                  for w, split in word_splits(lexicon).items() if split == "test")


def test_phrasings() -> list[str]:
    """The test half's templates other than the training grammar's own."""
    return [t for t in TEMPLATES[1:] + POSITION_TEMPLATES[1:] if split_of(t) == "test"]


def evaluate(pipe, items, seeds: int, expand: bool, **options) -> dict:
    """Generate each paraphrase with seeds 0..S-1 and check against its canonical caption."""
    passed, started, rewrites = 0, time.perf_counter(), {}
    for item in items:
        result = pipe(item.text, seed=0, num_images=seeds, expand=expand, **options)
        passed += sum(check(image, item.canonical).ok for image in result.images)
        rewrites[item.text] = [item.canonical, result.recipes[0]["prompt"]]
    runs = len(items) * seeds
    exact = np.mean([canonical == given for canonical, given in rewrites.values()])
    return {"pass_rate": round(passed / runs, 3), "images": runs,
            "expanded_to_canonical": round(float(exact), 3) if expand else None,
            "seconds": round(time.perf_counter() - started, 1), "prompts": rewrites}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes", help="model name or folder")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--expand", action="store_true", help="rewrite prompts first")
    parser.add_argument("--sets", default=None, help="comma list of CATEGORY/seen|held_out")
    parser.add_argument("--scoring", default="bertscore", choices=("bertscore", "pooled"),
                        help="--expand ablation: how candidates are scored")
    parser.add_argument("--no-recombine", action="store_true",
                        help="--expand ablation: retrieve training captions only")
    args = parser.parse_args()

    pipe = imagesynth.load(args.model)
    if args.expand:
        from imagesynth.text.expand import PromptExpander

        pipe._expander = PromptExpander(pipe.text_encoder, pipe.captions or [],
                                        recombined=not args.no_recombine, scoring=args.scoring)
    used = check_held_out(test_vocabulary(), pipe.captions or [])
    if pipe.captions is None or used:
        sys.exit(f"error: model: {'no captions.txt' if pipe.captions is None else used} - the "
                 "test vocabulary must be outside the training captions")
    sets = prompt_sets()
    names = [n.strip() for n in args.sets.split(",")] if args.sets else list(sets)
    report = {"benchmark": "paraphrase_shapes", "model": args.model, "seeds": args.seeds,
              "expand": args.expand, "scoring": args.scoring if args.expand else None,
              "recombine": not args.no_recombine if args.expand else None, "test_words": test_vocabulary(),
              "test_phrasings": test_phrasings(), "sets": {}}
    for name in names:
        entry = evaluate(pipe, sets[name], args.seeds, args.expand)
        report["sets"][name] = entry
        print(json.dumps({name: {k: v for k, v in entry.items() if k != "prompts"}}),
              file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
