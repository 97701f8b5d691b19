"""Layout ControlNet on ShapesWorld: do objects land in the given masks, and does the prompt still hold?

For held-out scenes (drawn from their own seed, so never in the training data: each is also
checked against the training folder's scenes when --data is given), generate with the scene's
layout map and caption, then segment the image with the checker's own segmentation
(`data.shapes_check`) and, per object of the layout:

- placement: the centroid of the segmented component that overlaps the object's mask most lies
  inside that mask (coverage >= 0.5), and their IoU is >= 0.5; a scene passes when all its
  objects do (goal: >= 90 %);
- prompt: the checker finds the caption's colours and shapes (goal: >= 85 %), and (reported too)
  the whole caption including its position words.

The base model without control runs on the same prompts and seeds for comparison. Prints JSON.

    python benchmarks/control_shapes.py --controlnet runs/controlnet-shapes-layout/model
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from imagesynth.data.conditions import layout_map
from imagesynth.data.shapes import Scene, object_masks, sample_scene
from imagesynth.data.shapes_check import (FOREGROUND_DISTANCE, _border_colour, _segment,
                                          _to_float_rgb, check)
from imagesynth.data.shapes_dataset import scene_rng

PLACEMENT_GOAL, PROMPT_GOAL = 0.90, 0.85
MIN_IOU = 0.5


def segmented_components(image) -> list[np.ndarray]:
    """Boolean masks of the checker's foreground components (its own segmentation)."""
    rgb = _to_float_rgb(image)
    distance = np.linalg.norm(rgb - _border_colour(rgb), axis=-1)
    labels = _segment(distance)
    return [(labels == k) & (distance > FOREGROUND_DISTANCE) for k in range(1, labels.max() + 1)]


def placement(image, scene: Scene) -> dict:
    """Per-object centroid-in-mask and IoU of the best-overlapping segmented component."""
    components = segmented_components(image)
    objects = []
    for mask in object_masks(scene):
        target = mask >= 0.5
        if not components:
            objects.append({"centroid_inside": False, "iou": 0.0})
            continue
        overlaps = [int((c & target).sum()) for c in components]
        best = components[int(np.argmax(overlaps))]
        ys, xs = np.nonzero(best)
        cy, cx = int(ys.mean()), int(xs.mean())  # the pixel holding the centroid
        iou = float((best & target).sum() / max((best | target).sum(), 1))
        objects.append({"centroid_inside": bool(mask[cy, cx] >= 0.5), "iou": iou})
    ok = all(o["centroid_inside"] and o["iou"] >= MIN_IOU for o in objects)
    return {"ok": ok, "objects": objects}


def held_out_scenes(count: int, seed: int, size: int) -> list[Scene]:
    """Scenes drawn like the training set's (same generator settings) from another seed."""
    return [sample_scene(scene_rng(seed, i), size) for i in range(count)]


def training_scene_keys(data: Path) -> set[str]:
    """The training folder's scenes, as canonical JSON, to prove the held-out ones are new."""
    keys = set()
    for line in (data / "captions.jsonl").read_text().splitlines():
        if line.strip():
            keys.add(json.dumps(json.loads(line)["scene"], sort_keys=True))
    return keys


def evaluate(pipe, scenes: list[Scene], controlnet: str | None, steps: int | None,
             scale: float) -> dict:
    """Generate one image per scene (seed = scene index) and score placement and prompt."""
    from imagesynth.families.controlnet import ControlInput

    placed, colour_shape, whole, ious = 0, 0, 0, []
    started = time.perf_counter()
    for index, scene in enumerate(scenes):
        controls = None
        if controlnet is not None:
            controls = [ControlInput(layout_map(scene, pipe.image_size), controlnet, scale)]
        image = pipe(scene.caption, seed=index, num_steps=steps, controls=controls).images[0]
        result = placement(image, scene)
        verdict = check(image, scene.caption)
        placed += result["ok"]
        colour_shape += verdict.colour_ok and verdict.shape_ok
        whole += verdict.ok
        ious.extend(o["iou"] for o in result["objects"])
    n = len(scenes)
    return {"placement_pass": placed / n, "colour_shape_pass": colour_shape / n,
            "caption_pass": whole / n, "mean_object_iou": float(np.mean(ious)),
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controlnet", required=True, help="ControlNet model folder (layout).")
    parser.add_argument("--model", default="shapes", help="Base diffusion model.")
    parser.add_argument("--count", type=int, default=200, help="Held-out scenes.")
    parser.add_argument("--seed", type=int, default=1_000_003, help="Seed of the held-out scenes.")
    parser.add_argument("--steps", type=int, default=None, help="Sampler steps (model default).")
    parser.add_argument("--scale", type=float, default=1.0, help="Control scale.")
    parser.add_argument("--data", type=Path, default=None,
                        help="Training folder: verify no held-out scene occurs in it.")
    args = parser.parse_args(argv)

    from imagesynth.pipeline import load_pipeline

    pipe = load_pipeline(args.model)
    scenes = held_out_scenes(args.count, args.seed, pipe.image_size)
    report = {"benchmark": "control_shapes", "model": args.model, "model_hash": pipe.model_hash,
              "controlnet": args.controlnet, "count": args.count, "scene_seed": args.seed,
              "steps": args.steps or pipe.default_steps, "sampler": pipe.default_sampler,
              "guidance": pipe.default_guidance, "scale": args.scale,
              "goals": {"placement_pass": PLACEMENT_GOAL, "colour_shape_pass": PROMPT_GOAL},
              "command": "python benchmarks/control_shapes.py " + " ".join(
                  sys.argv[1:] if argv is None else argv)}
    if args.data is not None:
        known = training_scene_keys(args.data)
        report["held_out_scenes_in_training_data"] = sum(
            json.dumps(s.to_dict(), sort_keys=True) in known for s in scenes)
    report["with_control"] = evaluate(pipe, scenes, args.controlnet, args.steps, args.scale)
    report["without_control"] = evaluate(pipe, scenes, None, args.steps, args.scale)
    report["goals_met"] = {
        key: report["with_control"][key] >= goal for key, goal in report["goals"].items()}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
