"""Text-to-image figures for an emoji model: CLIP rank of the prompt's emoji, FD_clip, P&R, sheet.

For every emoji name of the data folder, generate one image of "NAME, STYLE style" with seed 0;
a CLIP then classifies each image among all names: top-1/top-5 say how often the prompt's emoji
ranks first / in the top 5. The same CLIP's image tower gives the Fréchet distance (FD_clip-NAME)
and precision/recall of the generations against the folder's images of that style. Optionally
writes a labelled contact sheet of N prompts spread over the names. Prints JSON. Example:
  python benchmarks/generate_emoji.py --model emoji --clip emoji-clip --data data/emoji \\
      --sheet docs/emoji-contact-sheet.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import imagesynth
from imagesynth.clip import load_clip
from imagesynth.apps.embedding import image_to_tensor
from imagesynth.clip.evaluation import (embed_images, embed_labels, rank_accuracy, target_ranks,
                                         topk_accuracy)
from imagesynth.data.folder import CaptionedImageFolder
from imagesynth.metrics.evaluate import compute_metrics, extract_features
from imagesynth.metrics.extractors import clip_extractor


def style_records(folder: Path, style: str) -> list[dict]:
    """The captions.jsonl records of one style (file, name, category, ...)."""
    records = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()
               if line.strip()]
    return [r for r in records if r.get("style") == style]


def top5_by_category(ranks: torch.Tensor, chosen: list[str],
                     categories: dict[str, str]) -> dict[str, dict]:
    """Per emoji category: how many generations and the fraction with the true name in the top 5."""
    groups: dict[str, list[int]] = {}
    for name, rank in zip(chosen, ranks.tolist()):
        groups.setdefault(categories[name], []).append(rank)
    return {category: {"n": len(r), "top5": round(sum(x < 5 for x in r) / len(r), 3)}
            for category, r in sorted(groups.items())}


def contact_sheet(images: list[Image.Image], labels: list[str], columns: int = 8,
                  tile: int = 128) -> Image.Image:
    """A grid of images (nearest-neighbour enlarged to `tile`) with their prompts underneath."""
    label_height = 28
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows * (tile + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * tile, (i // columns) * (tile + label_height)
        sheet.paste(image.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST), (x, y))
        words, lines = label.split(), [""]
        for word in words:  # wrap to two lines of at most ~21 characters
            if len(lines[-1]) + len(word) + 1 > 21 and lines[-1]:
                lines.append("")
            lines[-1] = f"{lines[-1]} {word}".strip()
        draw.multiline_text((x + 2, y + tile + 1), "\n".join(lines[:2]), fill="black", spacing=1)
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji", help="text-to-image model name or folder")
    parser.add_argument("--clip", default="emoji-clip", help="CLIP for ranking and FD features")
    parser.add_argument("--data", type=Path, required=True, help="emoji folder (names, reference)")
    parser.add_argument("--style", default="twitter")
    parser.add_argument("--template", default="{}", help="CLIP label template")
    parser.add_argument("--limit", type=int, default=None, help="only the first N names")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--sheet", type=Path, help="write a contact sheet PNG of --sheet-count prompts")
    parser.add_argument("--sheet-count", type=int, default=64)
    parser.add_argument("--save-dir", type=Path, help="also save every generation here as PNG")
    args = parser.parse_args()

    records = style_records(args.data, args.style)
    names = sorted({r["name"] for r in records})
    name_of_file = {r["file"]: r["name"] for r in records}
    categories = {r["name"]: r.get("category") or "?" for r in records}
    if not names:
        parser.error(f"no emoji of style {args.style!r} in {args.data}")
    targets_all = {name: i for i, name in enumerate(names)}
    chosen = names[:args.limit]
    prompts = [f"{name}, {args.style} style" for name in chosen]
    pipe = imagesynth.load(args.model)
    scorer = load_clip(args.clip)  # before the long generation, so a bad --clip fails at once
    if args.save_dir:
        args.save_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    images: list[Image.Image] = []
    for start in range(0, len(prompts), args.batch):
        batch = prompts[start:start + args.batch]
        made = pipe(batch, seed=[0] * len(batch), num_steps=args.steps,
                    guidance_scale=args.guidance).images
        if args.save_dir:  # kept as they come, so an interrupted run still leaves its images
            for i, image in enumerate(made, start=len(images)):
                image.save(args.save_dir / f"{i:04d}.png")
        images += made
        print(f"generated {len(images)}/{len(prompts)}", file=sys.stderr, flush=True)
    generation_seconds = time.perf_counter() - started

    generated = torch.stack([image_to_tensor(image) for image in images])
    size = scorer.model.config.image_size
    if generated.shape[-1] != size:
        generated = torch.nn.functional.interpolate(generated, size=(size, size), mode="area")
    image_emb = embed_images(scorer, generated)
    label_emb = embed_labels(scorer, names, [args.template])
    targets = torch.tensor([targets_all[n] for n in chosen])
    rank = target_ranks(image_emb, label_emb, targets)
    ranks = rank_accuracy(rank)
    by_category = top5_by_category(rank, chosen, categories)
    reference_folder = CaptionedImageFolder(args.data, resolution=size)
    reference_items = [(i, item) for i, item in enumerate(reference_folder.items)
                       if item.file in name_of_file]
    reference = torch.stack([(reference_folder[i]["image"] + 1) / 2 for i, _ in reference_items])
    # The same ranking for the real images: the ceiling the generations are measured against.
    reference_ranks = topk_accuracy(
        embed_images(scorer, reference), label_emb,
        torch.tensor([targets_all[name_of_file[item.file]] for _, item in reference_items]))
    extractor = clip_extractor(args.clip)
    features_gen, _ = extract_features(generated, extractor)
    features_ref, _ = extract_features(reference, extractor)
    metrics = compute_metrics(features_gen, features_ref, ["fd", "pr"],
                              distance_name=f"FD_{extractor.name}")

    if args.sheet:
        # Evenly spaced through the alphabetical names, so the sheet is not all "a..." emoji.
        picks = np.linspace(0, len(images) - 1, min(args.sheet_count, len(images))).round()
        picks = sorted({int(i) for i in picks})
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet([images[i] for i in picks], [prompts[i] for i in picks]).save(args.sheet)
    print(json.dumps({"benchmark": "generate_emoji", "model": args.model, "clip": args.clip,
                      "style": args.style, "template": args.template, "classes": len(names),
                      "generations": len(images), "seed": 0,
                      "clip_rank": ranks, "top5_by_category": by_category,
                      "reference_clip_rank": reference_ranks, "metrics": metrics,
                      "reference_images": len(reference),
                      "generation_seconds": round(generation_seconds, 1),
                      "sheet": str(args.sheet) if args.sheet else None}, indent=2))


if __name__ == "__main__":
    main()
