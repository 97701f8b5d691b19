"""Held-out bits/dim, sample validity and scene rate of a normalizing-flow (`flow`) model.

Bits/dim are exact (change of variables) on the val split of a ShapesWorld folder, with seeded
uniform dequantisation. For each temperature, N samples (seeds 0..N-1) are drawn: the share
with every pixel finite (a Glow inverse can overflow on unusual latents) and the share that are
finite ShapesWorld scenes of 1-2 objects (`imagesynth.data.shapes_check.detect_objects`). Also
images/s at batch 32. Prints JSON. Example:
    python benchmarks/flow_shapes.py --model shapes-flow --data data/shapes-30k
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from imagesynth.data.folder import CaptionedImageFolder
from imagesynth.data.shapes_check import detect_objects
from imagesynth.diffusion.noise import generators_from_seeds
from imagesynth.families.flow import bits_per_dim, load_flow
from imagesynth.train.datasets import images_as_uint8, to_uint8


def main() -> None:
    """Parse flags, measure, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-flow", help="flow model folder or name")
    parser.add_argument("--data", required=True, help="ShapesWorld folder (its val split)")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--temperatures", default="1.0,0.7")
    args = parser.parse_args()

    model = load_flow(args.model).eval()
    reference = images_as_uint8(CaptionedImageFolder(args.data, resolution=model.image_size,
                                                     split="val"))
    report = {"benchmark": "flow_shapes", "model": args.model, "val_images": len(reference),
              "bits_per_dim_val": round(bits_per_dim(model, reference), 4), "temperatures": {}}
    for temperature in (float(t) for t in args.temperatures.split(",")):
        images, started = [], time.perf_counter()
        for start in range(0, args.samples, 32):
            seeds = range(start, min(start + 32, args.samples))
            with torch.no_grad():
                images.append(model.sample(len(seeds), generators_from_seeds(seeds),
                                           temperature=temperature))
        seconds = time.perf_counter() - started
        images = torch.cat(images)
        finite = torch.isfinite(images).flatten(1).all(1)
        pixels = to_uint8(torch.nan_to_num(images)).permute(0, 2, 3, 1).numpy()
        counts = [len(detect_objects(np.ascontiguousarray(p))) for p in pixels]
        scenes = [bool(ok) and 1 <= c <= 2 for ok, c in zip(finite.tolist(), counts)]
        report["temperatures"][str(temperature)] = {
            "finite": round(float(finite.float().mean()), 4),
            "scenes_1_2_objects": round(float(np.mean(scenes)), 4),
            "images_per_second": round(args.samples / seconds, 1)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
