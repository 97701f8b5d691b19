"""What a vector VAE's prior decodes to, judged by the ShapesWorld pixel checker. Prints JSON.

    python benchmarks/vae_prior.py --model shapes-v32 --samples 512 [--prior normal]

Draws latents from the VAE's fitted sampling prior (`--prior mixture`, what `dream --drawer
decoder` starts from) or from N(0, I) in scaled latent units (`--prior normal`, the unit-std
Gaussian the grid autoencoders' drawer starts from) with a seeded generator, decodes each,
and runs `detect_objects`: the share of samples that are scenes of one or two objects
(ShapesWorld never has more or fewer), and how the detected colours and shapes spread over the
palette. A decoder whose prior covers the data gives mostly 1-2 objects and every colour and
shape; a drawer optimising its latent then moves between such scenes.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from imagesynth.data.shapes_check import detect_objects
from imagesynth.nets.autoencoder import load_autoencoder
from imagesynth.train.datasets import to_uint8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-v32", help="vector VAE: name or folder")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior", choices=("mixture", "normal"), default="mixture")
    args = parser.parse_args()

    model = load_autoencoder(args.model)
    if model.fixed_image_size is None:
        parser.error(f"{args.model} is a grid autoencoder; its prior is not a scene generator")
    generator = torch.Generator().manual_seed(args.seed)
    if args.prior == "mixture":
        z = model.latent_prior.sample(args.samples, generator)
    else:
        z = torch.randn(args.samples, model.latent_channels, 1, 1, generator=generator)
    with torch.no_grad():
        arrays = to_uint8(model.decode(z)).permute(0, 2, 3, 1).numpy()  # [N, S, S, 3]
    counts, colours, shapes = Counter(), Counter(), Counter()
    for array in arrays:
        objects = detect_objects(array)
        counts[min(len(objects), 3)] += 1
        colours.update(obj.colour for obj in objects)
        shapes.update(obj.shape for obj in objects)
    n = args.samples
    print(json.dumps({
        "benchmark": "vae_prior", "model": args.model, "prior": args.prior, "samples": n,
        "seed": args.seed,
        "scene_rate": round((counts[1] + counts[2]) / n, 3),
        "objects": {("3+" if k == 3 else str(k)): round(v / n, 3) for k, v in sorted(counts.items())},
        "colours": dict(colours.most_common()), "shapes": dict(shapes.most_common()),
    }, indent=2))


if __name__ == "__main__":
    main()
