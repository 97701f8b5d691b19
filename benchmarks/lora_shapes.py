"""LoRA on the bundled `shapes` model: teach it one colour–shape pair it draws badly, keep the rest.

The target is a held-out pair under a colour word the captions never use: "a teal square",
judged as "a cyan square" (teal is the checker's cyan; cyan squares never appear in the model's
training data, and "teal" is not one of its words). The base model draws blue squares for it.
Steps: write `--images` ShapesWorld scenes of the pair (one object, 80 % with a position
caption, seed 0) into RUN/data; train a rank-4 attention LoRA with `imagesynth finetune lora`'s
library call (skipped when RUN/run/lora.safetensors exists); then generate, with the same seeds
and without/with the LoRA, the target prompt (`--seeds` seeds) and "a COLOUR SHAPE" for the 23
other pairs (`--other-seeds` seeds each), every image judged by the ShapesWorld checker.
Prints JSON. Example:  python benchmarks/lora_shapes.py --out runs/lora-shapes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import imagesynth
from imagesynth.data.shapes import (COLOURS, MAX_OBJECT_FRACTION, MIN_OBJECT_FRACTION,
                                    POSITION_MARGIN, POSITIONS, SHAPES, Scene, ShapeObject,
                                    position_holds, render_scene)
from imagesynth.data.shapes_check import check


def pair_scene(rng: np.random.Generator, colour: str, shape: str, size: int,
               position_fraction: float = 0.8) -> Scene:
    """One object of the given pair, placed like the ShapesWorld generator places it."""
    side = round(rng.uniform(MIN_OBJECT_FRACTION, MAX_OBJECT_FRACTION) * size * 4) / 4
    position = POSITIONS[rng.integers(len(POSITIONS))] if rng.random() < position_fraction \
        else None
    while True:
        left, top = (round(rng.uniform(1, size - 1 - side) * 4) / 4 for _ in range(2))
        obj = ShapeObject(colour, shape, left, top, side)
        if position is None or position_holds(obj, position, size, POSITION_MARGIN):
            return Scene(size, (obj,), position)


def write_pair_folder(folder: Path, colour: str, shape: str, word: str, count: int,
                      size: int = 32, seed: int = 0) -> None:
    """`count` images of (colour, shape) captioned with `word` instead of the colour name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        scene = pair_scene(rng, colour, shape, size)
        render_scene(scene).save(folder / f"{i:03d}.png")
        plain = f"a {word} {shape}"
        captions = [plain] if scene.position is None else [f"{plain} on the {scene.position}",
                                                           plain]
        lines.append(json.dumps({"file": f"{i:03d}.png", "caption": captions[0],
                                 "captions": captions}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")


def pass_rate(pipe, prompt: str, caption: str, seeds: int, loras=None) -> float:
    """Fraction of seeds 0..seeds-1 whose image the checker passes for `caption`."""
    images = pipe(prompt, seed=0, num_images=seeds, loras=loras).images
    return sum(check(image, caption).ok for image in images) / seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--colour", default="cyan")
    parser.add_argument("--shape", default="square")
    parser.add_argument("--word", default="teal", help="the colour word the prompt uses")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--other-seeds", type=int, default=4)
    parser.add_argument("--out", default="runs/lora-shapes")
    args = parser.parse_args()

    from imagesynth.families.personalise import LoraSettings, finetune_lora, lora_size

    out = Path(args.out)
    lora_path = out / "run" / "lora.safetensors"
    report: dict = {"benchmark": "lora_shapes", "model": args.model,
                    "target_prompt": f"a {args.word} {args.shape}",
                    "target_caption": f"a {args.colour} {args.shape}", "images": args.images,
                    "rank": args.rank, "targets": "attn", "weight": args.weight,
                    "steps": args.steps, "batch_size": args.batch_size}
    if not lora_path.is_file():
        write_pair_folder(out / "data", args.colour, args.shape, args.word, args.images)
        result = finetune_lora(args.model, out / "data", out / "run",
                               LoraSettings(rank=args.rank),
                               overrides={"max_steps": args.steps, "batch_size": args.batch_size},
                               show_progress=False)
        report["training"] = {"steps": result.steps, "seconds": round(result.seconds, 1),
                              "trainable_parameters": result.trainable_parameters,
                              "last_loss": result.metrics.get("loss")}
    report["lora_file"] = lora_size(lora_path)

    pipe = imagesynth.load(args.model)
    loras = [(lora_path, args.weight)]
    started = time.perf_counter()
    target = {"base": pass_rate(pipe, report["target_prompt"], report["target_caption"],
                                args.seeds),
              "lora": pass_rate(pipe, report["target_prompt"], report["target_caption"],
                                args.seeds, loras), "seeds": args.seeds}
    print(json.dumps({"target": target}), file=sys.stderr, flush=True)
    others = {}
    for colour in COLOURS:
        for shape in SHAPES:
            if (colour, shape) == (args.colour, args.shape):
                continue
            prompt = f"a {colour} {shape}"
            others[prompt] = {"base": pass_rate(pipe, prompt, prompt, args.other_seeds),
                              "lora": pass_rate(pipe, prompt, prompt, args.other_seeds, loras)}
            print(json.dumps({prompt: others[prompt]}), file=sys.stderr, flush=True)
    same_pixels = f"a {args.colour} {args.shape}"  # the pair under its own name
    report.update(
        target=target,
        same_pair_own_word={"prompt": same_pixels,
                            "base": pass_rate(pipe, same_pixels, same_pixels, args.other_seeds),
                            "lora": pass_rate(pipe, same_pixels, same_pixels, args.other_seeds,
                                              loras)},
        other_pairs={"base": round(float(np.mean([v["base"] for v in others.values()])), 3),
                     "lora": round(float(np.mean([v["lora"] for v in others.values()])), 3),
                     "prompts": len(others), "seeds_each": args.other_seeds,
                     "per_prompt": others},
        evaluation_seconds=round(time.perf_counter() - started, 1))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
