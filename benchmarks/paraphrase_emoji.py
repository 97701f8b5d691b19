"""Emoji from descriptions whose words no training caption uses: CLIP rank of the intended emoji.

Descriptions come from `imagesynth.data.emoji_descriptions` (CLDR and emojilib keywords that
share no word with the model's `captions.txt`; the benchmark checks this first). N described
emoji are drawn by SHA-256 of their code points; each description is generated as
"DESCRIPTION, twitter style" with seed 0, and the bundled CLIP ranks the image among all emoji
names (as `generate_emoji.py` does for names). Side by side in one run, on the same prompts and
seed: the prompt as typed, and `--expand` (BERTScore retrieval over the captions and their
recombinations). Its ablations (pooled-cosine scoring; training captions only) report where
their rewrites land, and are generated and ranked too when named in `--rank`; images are shared
between conditions that give the model the same prompt.
Also reports how many of the names' own prompts `--expand` leaves unchanged (training captions:
their images cannot move) and, with `--names`, ranks the others typed and expanded, which bounds
how far `--expand` moves the names' top 5. Prints JSON. Example:
  python benchmarks/paraphrase_emoji.py --model emoji --clip emoji-clip --data data/emoji --count 256
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

import imagesynth
from imagesynth.apps.embedding import image_to_tensor
from imagesynth.clip import load_clip
from imagesynth.clip.evaluation import embed_images, embed_labels, rank_accuracy, target_ranks
from imagesynth.data.emoji_descriptions import (caption_vocabulary, check_held_out, describe,
                                                load_keyword_table, package_hashes)
from imagesynth.text.expand import PromptExpander

sys.path.insert(0, str(Path(__file__).parent))
from generate_emoji import style_records, top5_by_category  # noqa: E402

#: condition -> PromptExpander options (None: the prompt as typed)
CONDITIONS = {"typed": None,
              "expand": {"scoring": "bertscore", "recombined": True},
              "expand_pooled": {"scoring": "pooled", "recombined": True},
              "expand_no_recombine": {"scoring": "bertscore", "recombined": False}}


def described_emoji(records: list[dict], captions: list[str], count: int) -> list[tuple]:
    """[(record, EmojiDescription)] for `count` described emoji, drawn by SHA-256 of the code."""
    table, vocabulary = load_keyword_table(), caption_vocabulary(captions)
    described = [(r, d) for r in records if (d := describe(r["unified"], table, vocabulary))]
    described.sort(key=lambda pair: hashlib.sha256(pair[0]["unified"].encode()).hexdigest())
    return described[:count]


def expansions(expander: PromptExpander, typed: list[str],
               conditions: list[str]) -> dict[str, list[str]]:
    """{condition: the prompts the model is given}; one BERTScore pass serves two conditions."""
    given: dict[str, list[str]] = {"typed": typed} if "typed" in conditions else {}
    encoder, captions = expander.encoder, expander.captions
    if {"expand", "expand_no_recombine"} & set(conditions):
        # candidates start with the training captions, so the best of the first n scores is
        # exactly what an expander without recombination returns
        best = [expander.scores(p) for p in typed]
        n = len(expander.captions)
        given["expand"] = [expander.candidates[int(s.argmax())] for s in best]
        given["expand_no_recombine"] = [expander.captions[int(s[:n].argmax())] for s in best]
    if "expand_pooled" in conditions:
        pooled = PromptExpander(encoder, captions, **CONDITIONS["expand_pooled"])
        given["expand_pooled"] = [pooled(p).expanded for p in typed]
    return {c: given[c] for c in conditions}


def generate_once(pipe, prompts: list[str], cache: dict, batch: int) -> None:
    """Generate seed 0 of every prompt not in `cache` yet (prompt -> image)."""
    todo = sorted({p for p in prompts if p not in cache})
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        for prompt, image in zip(chunk, pipe(chunk, seed=[0] * len(chunk)).images):
            cache[prompt] = image
        print(f"generated {len(cache)} distinct prompts", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji", help="text-to-image model name or folder")
    parser.add_argument("--clip", default="emoji-clip", help="CLIP that ranks the images")
    parser.add_argument("--data", type=Path, required=True, help="emoji folder (names)")
    parser.add_argument("--style", default="twitter")
    parser.add_argument("--count", type=int, default=256, help="described emoji to generate")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help="comma list of " + ", ".join(CONDITIONS))
    parser.add_argument("--rank", default="typed,expand",
                        help="conditions whose images are generated and ranked (the others "
                             "report only where their rewrites land)")
    parser.add_argument("--names", action="store_true",
                        help="also generate the names --expand rewrites, typed and expanded")
    args = parser.parse_args()

    pipe = imagesynth.load(args.model)
    scorer = load_clip(args.clip)
    captions = pipe.captions or []
    if not captions:
        sys.exit("error: model: no captions.txt - the held-out check needs the training captions")
    records = style_records(args.data, args.style)
    names = sorted({r["name"] for r in records})
    chosen = described_emoji(records, captions, args.count)
    used = check_held_out([d for _, d in chosen], captions)
    if used:
        sys.exit(f"error: descriptions use training-caption words {used}")
    typed = [f"{d.description}, {args.style} style" for _, d in chosen]
    own_captions = {r["name"]: set(r["captions"]) for r in records}
    started = time.perf_counter()

    expander = PromptExpander(pipe.text_encoder, captions, **CONDITIONS["expand"])
    given = expansions(expander, typed, args.conditions.split(","))
    ranked = [c for c in args.rank.split(",") if c in given]
    cache: dict = {}
    for condition in ranked:
        generate_once(pipe, given[condition], cache, args.batch)

    label_emb = embed_labels(scorer, names, ["{}"])
    size = scorer.model.config.image_size
    targets = torch.tensor([names.index(r["name"]) for r, _ in chosen])
    conditions = {}
    for condition, prompts in given.items():
        # the rewrite picked one of the intended emoji's own training captions
        to_target = None if condition == "typed" else round(sum(
            p in own_captions[r["name"]] for p, (r, _) in zip(prompts, chosen)) / len(chosen), 3)
        conditions[condition] = {"expanded_to_target": to_target}
        if condition not in ranked:
            continue
        images = torch.stack([image_to_tensor(cache[p]) for p in prompts])
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images, size=(size, size), mode="area")
        rank = target_ranks(embed_images(scorer, images), label_emb, targets)
        conditions[condition].update({
            "clip_rank": rank_accuracy(rank),
            "top5_by_category": top5_by_category(rank, [r["name"] for r, _ in chosen],
                                                 {r["name"]: r.get("category") or "?"
                                                  for r, _ in chosen}),
            "ranks": rank.tolist()})
    # Names: `--expand` leaves a training caption as it is; only the names of validation
    # images are not captions, so only they can move the names' top 5.
    name_prompts = [f"{name}, {args.style} style" for name in names]
    moved = [(i, p, expander(p).expanded) for i, p in enumerate(name_prompts)
             if p not in expander.captions]
    names_report = {"unchanged": len(names) - len(moved), "rewritten": len(moved)}
    if moved and args.names:
        generate_once(pipe, [p for _, p, _ in moved] + [e for _, _, e in moved], cache, args.batch)
        moved_targets = torch.tensor([i for i, _, _ in moved])
        for key, column in (("typed", 1), ("expand", 2)):
            images = torch.stack([image_to_tensor(cache[m[column]]) for m in moved])
            if images.shape[-1] != size:
                images = torch.nn.functional.interpolate(images, size=(size, size), mode="area")
            rank = target_ranks(embed_images(scorer, images), label_emb, moved_targets)
            names_report[f"rewritten_top5_{key}"] = round(float((rank < 5).float().mean()), 3)
        names_report["rewrites"] = {p: e for _, p, e in moved}
    print(json.dumps({
        "benchmark": "paraphrase_emoji", "model": args.model, "clip": args.clip,
        "style": args.style, "classes": len(names), "described": len(chosen), "seed": 0,
        "keyword_sources": package_hashes(), "description_words_in_captions": used,
        "names_under_expand": names_report,
        "conditions": conditions,
        "distinct_images": len(cache), "seconds": round(time.perf_counter() - started, 1),
        "prompts": [{"emoji": r["name"], "typed": t,
                     **{c: given[c][i] for c in given if c != "typed"}}
                    for i, ((r, _), t) in enumerate(zip(chosen, typed))]}, indent=2))


if __name__ == "__main__":
    main()
