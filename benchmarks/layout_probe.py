"""Does a text-to-image model's denoiser use position words? A probe at fixed noise levels.

At noise level sigma the ideal denoiser returns the mean of the images that fit the prompt, so
for "a red circle on the left" its left half should come out darker (more object) than for
"... on the right". For each sigma this prints, over the same noise draws, the mean of
D(left prompt) - D(right prompt) in the left and in the right half of the image (all channels;
a model that places objects gives a negative left half and a positive right half), and with
`--data` the same difference between the data set's mean "on the left" and "on the right" images.
Prints JSON. Example:  python benchmarks/layout_probe.py --model shapes --data data/shapes
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import imagesynth


def half_differences(difference: torch.Tensor) -> dict[str, float]:
    """Mean of a [3, H, W] difference image over its left and right halves."""
    width = difference.shape[-1]
    return {"left_half": round(float(difference[..., :width // 2].mean()), 4),
            "right_half": round(float(difference[..., width // 2:].mean()), 4)}


def data_difference(folder: Path, size: int) -> dict[str, float]:
    """Mean "on the left" image minus mean "on the right" image of a ShapesWorld folder, in [-1, 1]."""
    sums = {"left": None, "right": None}
    counts = {"left": 0, "right": 0}
    for line in (folder / "captions.jsonl").read_text().splitlines():
        record = json.loads(line)
        position = (record.get("scene") or {}).get("position")
        if record.get("kind") != "position" or position not in sums:
            continue
        image = Image.open(folder / record["file"]).convert("RGB").resize((size, size))
        array = np.asarray(image, dtype=np.float64) / 127.5 - 1
        sums[position] = array if sums[position] is None else sums[position] + array
        counts[position] += 1
    if not all(counts.values()):
        raise SystemExit(f"{folder} has no 'on the left/right' position images")
    mean = {k: torch.from_numpy(sums[k] / counts[k]).permute(2, 0, 1) for k in sums}
    return {**half_differences(mean["left"] - mean["right"]), "images": counts}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="diffusion model name or folder")
    parser.add_argument("--data", type=Path, help="ShapesWorld folder: the data set's own difference")
    parser.add_argument("--subject", default="a red circle")
    parser.add_argument("--sigmas", default="80,10,3")
    parser.add_argument("--samples", type=int, default=16, help="noise draws averaged per sigma")
    args = parser.parse_args()

    pipe = imagesynth.load(args.model)
    channels, height, width = pipe.sample_shape
    noise = torch.randn(args.samples, channels, height, width,
                        generator=torch.Generator().manual_seed(0)).to(pipe.device)
    prompts = [f"{args.subject} on the left", f"{args.subject} on the right"]
    denoisers = [pipe.guided_denoiser([p] * args.samples, "", 1.0) for p in prompts]
    report: dict = {"benchmark": "layout_probe", "model": args.model, "prompts": prompts,
                    "model_difference": {}}
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        sigmas = torch.full((args.samples,), sigma, device=pipe.device)
        left, right = (pipe.decode(d(noise * sigma, sigmas)).mean(0).cpu() for d in denoisers)
        report["model_difference"][f"sigma={sigma:g}"] = half_differences(left - right)
    if args.data:
        report["data_difference"] = data_difference(args.data, pipe.image_size)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
