"""DreamBooth on the bundled `shapes` model: a two-tone (or striped) circle from 5 images, as "sks".

The subject (`data.shapes_subjects`, `--subject`): a circle whose left half is red and right
half blue ("two-tone", the default), or one with red/blue horizontal stripes of period 4 px
("stripes"); ShapesWorld never draws either. Steps: render `--images` subject images at random
places (seed 0) into RUN/subject; `imagesynth finetune dreambooth`'s library call with prior
preservation (class prompt "a circle", `--class-images` images of the base model, prior weight 1;
`--no-prior` trains on the subject alone) and a rank-`--rank` LoRA on every block layer
(`--targets all`: at 32 px the attention layers sit at 8×8 only), learning rate 2e-4, or
`--full`: every weight, learning rate 5e-5 (skipped when RUN/run holds the result); then, with
the same seeds before and after:
- token prompts "a sks circle" and "a sks circle on the left|right|top|bottom": an image shows
  the subject when the checker finds exactly one object, a circle, on its one-colour silhouette
  (`one_colour_silhouette`: a red|blue object would otherwise be matched to black's mixing line
  and its fill ratio misread), and the subject's pattern test passes (`two_tone_pattern` or
  `stripe_pattern`); position prompts also need the checker's position; "new position" = the
  centroid is at least `--new-distance` px from every training image's centroid (the report's
  `new_place_ceiling`: the rate ShapesWorld's own placements reach, about 0.67 with 3 px and
  the 5 default images, so a model that draws positions as the data does scores about that);
- class prompts without the token: "a circle" (one circle found) and "a red|blue|purple circle"
  (checker pass), and for each the share of images passing the subject's pattern test, to see
  whether the class drifted (towards the subject, which colour and shape alone can miss).
Prints JSON. Example:  python benchmarks/dreambooth_shapes.py --out runs/dreambooth-two-tone
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
from imagesynth.data.shapes_subjects import (RENDERERS, one_colour_silhouette, sample_subject,
                                             stripe_pattern, two_tone_pattern)

PATTERN_TESTS = {"stripes": stripe_pattern, "two-tone": two_tone_pattern}


def write_subject(folder: Path, count: int, subject: str, size: int = 32,
                  seed: int = 0) -> list[tuple]:
    """`count` images of the subject at random places; returns their centroids."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centroids = []
    for i in range(count):
        obj = sample_subject(rng, size)
        RENDERERS[subject](obj, size).save(folder / f"{i}.png")
        centroids.append(obj.centroid)
    return centroids


def subject_verdicts(images, subject: str, position: str | None, training_centroids,
                     new_distance: float):
    """Per image: subject shown, position right (or None), centroid in a new place."""
    verdicts = []
    for image in images:
        found = detect_objects(one_colour_silhouette(image))
        is_subject = (len(found) == 1 and found[0].shape == "circle"
                      and PATTERN_TESTS[subject](image).ok)
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


def new_place_ceiling(training_centroids, new_distance: float, samples: int = 2000) -> float:
    """The new-place rate of ShapesWorld's own placements for the token prompts (no position and
    each position, equally): what a model that places the subject as the data does would score,
    since that often lands within `new_distance` of one of the training images by chance."""
    rng = np.random.default_rng(1)
    new = [min(np.hypot(x - a, y - b) for a, b in training_centroids) >= new_distance
           for position in (None, *POSITIONS) for _ in range(samples)
           for x, y in [sample_subject(rng, 32, position).centroid]]
    return round(float(np.mean(new)), 3)


def class_rates(pipe, seeds: int, loras, subject: str) -> tuple[dict, dict]:
    """Class prompts without the token: one circle for "a circle", checker pass for coloured;
    and per prompt the share of images that show the subject's pattern (the class taking on
    the subject, which the checker's colour and shape verdicts can miss)."""
    rates, leaks = {}, {}
    for prompt in ("a circle", "a red circle", "a blue circle", "a purple circle"):
        images = pipe(prompt, seed=0, num_images=seeds, loras=loras).images
        if prompt == "a circle":
            rates[prompt] = sum(len(f) == 1 and f[0].shape == "circle"
                                for f in map(detect_objects, images)) / seeds
        else:
            rates[prompt] = sum(check(image, prompt).ok for image in images) / seeds
        leaks[prompt] = sum(PATTERN_TESTS[subject](image).ok for image in images) / seeds
    return ({k: round(v, 3) for k, v in rates.items()},
            {k: round(v, 3) for k, v in leaks.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--subject", choices=tuple(RENDERERS), default="two-tone")
    parser.add_argument("--no-prior", action="store_true", help="train without prior preservation")
    parser.add_argument("--full", action="store_true", help="train every weight (no LoRA)")
    parser.add_argument("--token", default="sks")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--class-images", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--targets", default="all", help="LoRA targets: attn or all")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default 2e-4 for a LoRA, 5e-5 with --full)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--new-distance", type=float, default=3.0)
    parser.add_argument("--out", default="runs/dreambooth-shapes")
    args = parser.parse_args()

    from imagesynth.families.personalise import (DreamBoothSettings, LoraSettings,
                                                 finetune_dreambooth)

    out = Path(args.out)
    lr = args.lr if args.lr is not None else (5e-5 if args.full else 2e-4)
    centroids = write_subject(out / "subject", args.images, args.subject)
    trained = out / "run" / ("model" if args.full else "lora.safetensors")
    report: dict = {"benchmark": "dreambooth_shapes", "model": args.model, "token": args.token,
                    "subject": args.subject, "images": args.images,
                    "prior_preservation": not args.no_prior,
                    "class_images": 0 if args.no_prior else args.class_images,
                    "steps": args.steps, "mode": "full" if args.full else "lora",
                    "rank": None if args.full else args.rank,
                    "targets": None if args.full else args.targets,
                    "learning_rate": lr, "seeds": args.seeds}
    if not trained.exists():
        settings = DreamBoothSettings(token=args.token, class_prompt="a circle",
                                      prior_preservation=not args.no_prior,
                                      num_class_images=args.class_images)
        lora = None if args.full else LoraSettings(rank=args.rank, targets=args.targets)
        result = finetune_dreambooth(args.model, out / "subject", out / "run", settings, lora,
                                     overrides={"max_steps": args.steps, "learning_rate": lr},
                                     show_progress=False)
        report["training"] = {"steps": result.steps, "seconds": round(result.seconds, 1),
                              "trainable_parameters": result.trainable_parameters,
                              "metrics": result.metrics, "notes": list(result.notes)}

    base = imagesynth.load(args.model)
    tuned, tuned_loras = ((imagesynth.load(trained), None) if args.full
                          else (base, [(trained, 1.0)]))
    started = time.perf_counter()
    for label, pipe, loras in (("base", base, None), ("dreambooth", tuned, tuned_loras)):
        verdicts = []
        for position in (None, *POSITIONS):
            prompt = f"a {args.token} circle" + (f" on the {position}" if position else "")
            images = pipe(prompt, seed=0, num_images=args.seeds, loras=loras).images
            verdicts += subject_verdicts(images, args.subject, position, centroids,
                                         args.new_distance)
        rates, leaks = class_rates(pipe, args.seeds, loras, args.subject)
        report[label] = {"token_prompts": summarise(verdicts), "class_prompts": rates,
                         "class_prompts_showing_subject": leaks}
        print(json.dumps({label: report[label]}), file=sys.stderr, flush=True)
    report["new_place_ceiling"] = new_place_ceiling(centroids, args.new_distance)
    report["evaluation_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
