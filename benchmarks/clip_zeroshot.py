"""Zero-shot figures for a CLIP model card: shapes colour×shape, emoji cross-style, paraphrases.

Prints JSON. Examples:
  python benchmarks/clip_zeroshot.py --model models/shapes-clip --shapes
  python benchmarks/clip_zeroshot.py --model models/emoji-clip --emoji data/emoji-google \\
      --paraphrases-in data/emoji-google --paraphrases-in data/emoji-twitter
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from imagesynth.clip import load_clip
from imagesynth.clip.evaluation import (emoji_zero_shot, load_paraphrases, paraphrase_retrieval,
                                        SHAPES_ENSEMBLE, shapes_zero_shot)

PARAPHRASES = Path(__file__).resolve().parents[1] / "tests" / "data" / "emoji_paraphrases.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="CLIP model name or folder")
    parser.add_argument("--shapes", action="store_true", help="colour×shape zero-shot (24 classes)")
    parser.add_argument("--shapes-size", type=int, default=32)
    parser.add_argument("--shapes-seed", type=int, default=0, help="seed of the rendered scenes")
    parser.add_argument("--shapes-template", action="append", default=None,
                        help="class phrasing with {colour} and {shape} (repeatable: ensemble)")
    parser.add_argument("--shapes-ensemble", action="store_true",
                        help="average the built-in list of generic phrasings (prompt ensembling)")
    parser.add_argument("--emoji", type=Path, help="emoji folder to classify among its names")
    parser.add_argument("--template", action="append", default=None,
                        help="label template(s), e.g. '{}, twitter style' (repeatable)")
    parser.add_argument("--paraphrases-in", type=Path, action="append", default=[],
                        help="emoji folder to retrieve from with the paraphrase list (repeatable)")
    args = parser.parse_args()

    start = time.perf_counter()
    scorer = load_clip(args.model)
    size = scorer.model.config.image_size
    report: dict = {"benchmark": "clip_zeroshot", "model": args.model}
    if args.shapes:
        templates = (SHAPES_ENSEMBLE if args.shapes_ensemble
                     else tuple(args.shapes_template or ["a {colour} {shape}"]))
        report["shapes"] = shapes_zero_shot(scorer, size=args.shapes_size, seed=args.shapes_seed,
                                            templates=templates)
    if args.emoji:
        templates = tuple(args.template or ["{}"])
        report["emoji"] = emoji_zero_shot(scorer, args.emoji, image_size=size,
                                          templates=templates)
        report["emoji"]["folder"] = args.emoji.name
    if args.paraphrases_in:
        pairs = load_paraphrases(PARAPHRASES)
        report["paraphrases"] = {folder.name: paraphrase_retrieval(scorer, folder, pairs,
                                                                   image_size=size)
                                 for folder in args.paraphrases_in}
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
