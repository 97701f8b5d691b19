"""A conditional GAN on ShapesWorld: checker pass rate and the truncation trick's trade-off.

- `checker`: "a COLOUR SHAPE" for every colour-shape pair the training data shows (the held-out
  pairs excluded), seeds 0..S-1 each, at psi = 1 and at each `--psi`, judged from the pixels.
- `truncation`: for each psi, `--samples` images conditioned on the held-out (val) captions of
  `--data`, against those held-out images in one feature space (`--extractor`): FD, precision,
  recall, density, coverage (Kynkaanniemi et al. 2019; Naeem et al. 2020). BigGAN's claim:
  lower psi, higher precision (fidelity), lower recall (variety).
Prints JSON; `--figure PATH` also draws precision and recall against psi. Example:
    python benchmarks/gan_shapes.py --model models/shapes-gan --data data/shapes-30k \
        --figure docs/gan-truncation.png
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from imagesynth.data import HELD_OUT_PAIRS, PALETTE, SHAPES, check
from imagesynth.diffusion.noise import generators_from_seeds
from imagesynth.families.gan import load_gan
from imagesynth.train.datasets import to_uint8


def seen_single_prompts() -> list[str]:
    """Single-object prompts of every colour-shape pair the training data shows."""
    return [f"a {colour} {shape}" for colour in PALETTE for shape in SHAPES
            if (colour, shape) not in HELD_OUT_PAIRS]


@torch.no_grad()
def checker_rates(model, prompts: list[str], seeds: int, psi: float) -> dict:
    """Pass rate (and per-attribute rates) of `seeds` samples of each prompt at one psi."""
    counts = {"ok": 0, "count_ok": 0, "colour_ok": 0, "shape_ok": 0}
    per_prompt = {}
    for prompt in prompts:
        condition = model.condition_for([prompt]).expand(seeds, -1)
        images = model.sample(seeds, generators_from_seeds(range(seeds)), condition, psi)
        verdicts = [check(array, prompt)
                    for array in to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()]
        for key in counts:
            counts[key] += sum(bool(getattr(v, key)) for v in verdicts)
        per_prompt[prompt] = sum(v.ok for v in verdicts)
    total = len(prompts) * seeds
    return {"pass_rate": counts["ok"] / total,
            "rates": {k: v / total for k, v in counts.items() if k != "ok"},
            "passed_per_prompt": per_prompt}


@torch.no_grad()
def truncation_sweep(model, data: str, psis: list[float], samples: int, extractor_name: str
                     ) -> list[dict]:
    """FD / precision / recall / density / coverage against the held-out images, per psi."""
    from imagesynth.data.folder import CaptionedImageFolder
    from imagesynth.train.datasets import images_as_uint8
    from imagesynth.metrics.evaluate import compute_metrics, extract_features
    from imagesynth.metrics.extractors import create_extractor

    reference = CaptionedImageFolder(data, resolution=model.image_size, split="val")
    extractor = create_extractor(extractor_name)
    reference_features, _ = extract_features(images_as_uint8(reference), extractor)
    captions = [reference.items[i % len(reference)].caption for i in range(samples)]
    conditions = model.condition_for(sorted(set(captions)))
    row_of = {text: i for i, text in enumerate(sorted(set(captions)))}
    condition = conditions[[row_of[c] for c in captions]]
    rows = []
    for psi in psis:
        images = torch.cat([
            model.sample(len(part), generators_from_seeds(range(start, start + len(part))),
                         condition[start:start + len(part)], psi)
            for start in range(0, samples, 64) for part in [captions[start:start + 64]]])
        features, _ = extract_features(((images + 1) / 2).clamp(0, 1), extractor)
        metrics = compute_metrics(features, reference_features, ("fd", "pr", "dc"),
                                  distance_name=extractor.distance_name)
        rows.append({"psi": psi, **{k: round(float(v), 4) for k, v in metrics.items()}})
    return rows


def save_figure(rows: list[dict], path: str) -> None:
    """Precision and recall (and density, coverage) against psi."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.4), dpi=120)
    psis = [row["psi"] for row in rows]
    for key, style in (("precision", "o-"), ("recall", "s-"), ("density", "^--"),
                       ("coverage", "v--")):
        if key in rows[0]:
            axis.plot(psis, [row[key] for row in rows], style, label=key)
    axis.set_xlabel("truncation ψ (1 = none)")
    axis.set_ylabel("against held-out scenes")
    axis.set_title("GAN truncation: fidelity vs variety")
    axis.invert_xaxis()
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    """Parse flags, measure, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="GAN model folder or registry name")
    parser.add_argument("--data", help="ShapesWorld folder whose val split is the reference "
                                       "(omit to skip the truncation sweep)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per checker prompt")
    parser.add_argument("--psi", default="1.0,0.9,0.8,0.7,0.6,0.5,0.3",
                        help="comma list of truncation values")
    parser.add_argument("--samples", type=int, default=1024, help="images per psi (sweep)")
    parser.add_argument("--extractor", default="clip:shapes-clip")
    parser.add_argument("--figure", help="write the sweep's figure here (PNG)")
    args = parser.parse_args()
    psis = [float(p) for p in args.psi.split(",")]
    model = load_gan(args.model)
    started = time.perf_counter()
    prompts = seen_single_prompts()
    report = {"model": str(args.model), "seeds": args.seeds, "prompts": len(prompts),
              "checker": {str(psi): checker_rates(model, prompts, args.seeds, psi)
                          for psi in psis}}
    if args.data:
        report["truncation"] = truncation_sweep(model, args.data, psis, args.samples,
                                                args.extractor)
        report["samples_per_psi"] = args.samples
        report["extractor"] = args.extractor
        if args.figure:
            save_figure(report["truncation"], args.figure)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
