"""DreamBooth on the bundled `shapes` model: a striped circle from 5 images, under the token "sks".

The subject (`data.shapes_subjects`: a circle with red/blue stripes) never occurs in the
model's data. Steps: render `--images` subject images at random places (seed 0) into
RUN/subject; `imagesynth finetune dreambooth`'s library call with prior preservation (class
prompt "a circle", `--class-images` images of the base model, prior weight 1) and a rank-4 LoRA
on every block layer (`--targets all`: at 32 px the attention layers sit at 8×8 only, too coarse
to draw 4 px stripes), learning rate 2e-4 (skipped when RUN/run/lora.safetensors exists); then, with the same seeds before and after:
- token prompts "a sks circle" and "a sks circle on the left|right|top|bottom": an image shows
  the subject when the checker finds exactly one object, a circle, and `stripe_pattern` passes;
  position prompts also need the checker's position; "new position" = the centroid is at least
  `--new-distance` px from every training image's centroid;
- class prompts without the token: "a circle" (one circle found) and "a red|blue|purple circle"
  (checker pass), to see whether the class drifted.
Prints JSON. Example:  python benchmarks/dreambooth_shapes.py --out runs/dreambooth-shapes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import imagesynth
from imagesynth.data.shapes import POSITIONS
from imagesynth.data.shapes_check import _position_ok, check, detect_objects
from imagesynth.data.shapes_subjects import render_striped_circle, sample_subject, stripe_pattern


def write_subject(folder: Path, count: int, size: int = 32, seed: int = 0) -> list[tuple]:
    """`count` subject images at random places; returns their centroids."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centroids = []
    for i in range(count):
        obj = sample_subject(rng, size)
        render_striped_circle(obj, size).save(folder / f"{i}.png")
        centroids.append(obj.centroid)
    return centroids


def subject_verdicts(images, position: str | None, training_centroids, new_distance: float):
    """Per image: subject shown, position right (or None), centroid in a new place."""
    verdicts = []
    for image in images:
        found = detect_objects(image)
        is_subject = (len(found) == 1 and found[0].shape == "circle"
                      and stripe_pattern(image).ok)
        where = None if position is None or not found else _position_ok(
            found[0], position, image.width, image.height)
        new = bool(found) and min(np.hypot(found[0].centroid[0] - x, found[0].centroid[1] - y)
                                  for x, y in training_centroids) >= new_distance
        verdicts.append({"subject": is_subject, "position": where, "new_place": new})
    return verdicts


def summarise(verdicts) -> dict:
    """Rates over a list of verdicts."""
    n = len(verdicts)
    ok = [v["subject"] and v["position"] is not False for v in verdicts]
    return {"images": n, "subject_rate": round(sum(v["subject"] for v in verdicts) / n, 3),
            "subject_and_position_rate": round(sum(ok) / n, 3),
            "subject_in_new_place_rate": round(
                sum(o and v["new_place"] for o, v in zip(ok, verdicts)) / n, 3),
            "positioned_images": sum(v["position"] is not None for v in verdicts)}


def class_rates(pipe, seeds: int, loras) -> dict:
    """Class prompts without the token: one circle for "a circle", checker pass for coloured."""
    rates = {}
    images = pipe("a circle", seed=0, num_images=seeds, loras=loras).images
    rates["a circle"] = sum(len(f) == 1 and f[0].shape == "circle"
                            for f in map(detect_objects, images)) / seeds
    for colour in ("red", "blue", "purple"):
        prompt = f"a {colour} circle"
        images = pipe(prompt, seed=0, num_images=seeds, loras=loras).images
        rates[prompt] = sum(check(image, prompt).ok for image in images) / seeds
    return {k: round(v, 3) for k, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--token", default="sks")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--class-images", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--targets", default="all", help="LoRA targets: attn or all")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--new-distance", type=float, default=3.0)
    parser.add_argument("--out", default="runs/dreambooth-shapes")
    args = parser.parse_args()

    from imagesynth.families.personalise import (DreamBoothSettings, LoraSettings,
                                                 finetune_dreambooth)

    out = Path(args.out)
    centroids = write_subject(out / "subject", args.images)
    lora_path = out / "run" / "lora.safetensors"
    report: dict = {"benchmark": "dreambooth_shapes", "model": args.model, "token": args.token,
                    "images": args.images, "class_images": args.class_images,
                    "steps": args.steps, "rank": args.rank, "targets": args.targets,
                    "learning_rate": args.lr, "seeds": args.seeds}
    if not lora_path.is_file():
        settings = DreamBoothSettings(token=args.token, class_prompt="a circle",
                                      prior_preservation=True,
                                      num_class_images=args.class_images)
        result = finetune_dreambooth(args.model, out / "subject", out / "run", settings,
                                     LoraSettings(rank=args.rank, targets=args.targets),
                                     overrides={"max_steps": args.steps,
                                                "learning_rate": args.lr}, show_progress=False)
        report["training"] = {"steps": result.steps, "seconds": round(result.seconds, 1),
                              "trainable_parameters": result.trainable_parameters,
                              "metrics": result.metrics, "notes": list(result.notes)}

    pipe = imagesynth.load(args.model)
    started = time.perf_counter()
    for label, loras in (("base", None), ("dreambooth", [(lora_path, 1.0)])):
        verdicts = []
        for position in (None, *POSITIONS):
            prompt = f"a {args.token} circle" + (f" on the {position}" if position else "")
            images = pipe(prompt, seed=0, num_images=args.seeds, loras=loras).images
            verdicts += subject_verdicts(images, position, centroids, args.new_distance)
        report[label] = {"token_prompts": summarise(verdicts),
                         "class_prompts": class_rates(pipe, args.seeds, loras)}
        print(json.dumps({label: report[label]}), file=sys.stderr, flush=True)
    report["evaluation_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
