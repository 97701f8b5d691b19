"""ShapesWorld checker pass rates of CLIP-guided synthesis, per drawer.

For every single-object prompt "a COLOUR SHAPE" (8 colours x 3 shapes) and several seeds, dream the
image with each drawer and judge it with the pixel checker (`imagesynth.data.shapes_check.check`).
Prints JSON with pass rates (overall, and colour/shape/count separately). Example:
  OMP_NUM_THREADS=2 python benchmarks/dream_shapes.py --clip models/shapes-clip \\
      --drawers pixelart,pixels,fourier --seeds 4
  OMP_NUM_THREADS=1 python benchmarks/dream_shapes.py --clip shapes-clip --drawers gan \\
      --gan shapes-gan --gan-start random --steps 60 --cutouts 8 --seeds 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from imagesynth.clip.foreign import load_scorer
from imagesynth.data.shapes import COLOURS, SHAPES
from imagesynth.data.shapes_check import check
from imagesynth.guided import DreamConfig, dream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", required=True, help="scorer: model name or folder")
    parser.add_argument("--drawers", default="pixelart,pixels,fourier")
    parser.add_argument("--decoder", help="autoencoder for the decoder drawer")
    parser.add_argument("--diffusion-model", help="diffusion model for the diffusion-latent drawer")
    parser.add_argument("--diffusion-steps", type=int, default=None,
                        help="sampler steps per render of the diffusion-latent drawer")
    parser.add_argument("--gan", help="GAN for the gan drawer")
    parser.add_argument("--gan-latent", default="w", help="gan drawer: w, w+ or z")
    parser.add_argument("--gan-truncation", type=float, default=1.0, help="gan drawer: start psi")
    parser.add_argument("--gan-start", default="prompt", help="gan drawer: prompt or random")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed + seeds - 1 (to split a long run)")
    parser.add_argument("--init-colour", help='start from a plain canvas, e.g. "white"')
    parser.add_argument("--init-noise", type=float, default=0.0, help="noise added to the start")
    parser.add_argument("--init-candidates", type=int, default=1,
                        help="random starts reranked by the scorer; the best is optimised")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (drawer default)")
    parser.add_argument("--lr-schedule", default="constant", help="constant or cosine")
    parser.add_argument("--cutout-noise", type=float, default=0.05, help="noise added to cutouts")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--cutouts", type=int, default=16)
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--tv-weight", type=float, default=0.0)
    parser.add_argument("--cutout-jitter", type=float, default=0.0, help="random zoom/shift per cutout")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N colour-shape prompts (for a quick look)")
    args = parser.parse_args()

    scorer = load_scorer(args.clip)
    decoder = None
    if args.decoder:
        from imagesynth.nets.autoencoder import load_autoencoder
        decoder = load_autoencoder(args.decoder)
    gan = None
    if args.gan:
        from imagesynth.guided.gan_drawer import load_gan_model
        gan = load_gan_model(args.gan)
    extra = {"diffusion_steps": args.diffusion_steps} if args.diffusion_steps else {}
    prompts = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES][:args.limit]
    report: dict = {"benchmark": "dream_shapes", "clip": args.clip, "size": args.size,
                    "steps": args.steps, "cutouts": args.cutouts, "lr": args.lr,
                    "lr_schedule": args.lr_schedule, "cutout_noise": args.cutout_noise,
                    "tv_weight": args.tv_weight, "cutout_jitter": args.cutout_jitter,
                    "init_colour": args.init_colour,
                    "init_noise": args.init_noise, "init_candidates": args.init_candidates,
                    "decoder": args.decoder, "diffusion_model": args.diffusion_model,
                    "gan": args.gan, "gan_latent": args.gan_latent,
                    "gan_truncation": args.gan_truncation, "gan_start": args.gan_start,
                    "seeds": args.seeds, "first_seed": args.first_seed,
                    "prompts": len(prompts), "drawers": {}}
    for drawer in [d.strip() for d in args.drawers.split(",") if d.strip()]:
        started = time.perf_counter()
        counts = {"ok": 0, "count_ok": 0, "colour_ok": 0, "shape_ok": 0}
        failures: dict[str, int] = {}
        runs = 0
        for prompt in prompts:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                config = DreamConfig(prompt=prompt, drawer=drawer, steps=args.steps,
                                     width=args.size, height=args.size, cutouts=args.cutouts,
                                     seed=seed, scorer=args.clip, cells=args.cells,
                                     tv_weight=args.tv_weight, decoder=args.decoder,
                                     diffusion_model=args.diffusion_model,
                                     learning_rate=args.lr, lr_schedule=args.lr_schedule,
                                     cutout_noise=args.cutout_noise, eval_every=args.steps,
                                     init_colour=args.init_colour, init_noise=args.init_noise,
                                     init_candidates=args.init_candidates,
                                     cutout_jitter=args.cutout_jitter, gan=args.gan,
                                     gan_latent=args.gan_latent,
                                     gan_truncation=args.gan_truncation,
                                     gan_start=args.gan_start, **extra)
                image = dream(config, scorer=scorer, decoder=decoder, gan=gan).image
                result = check(image, prompt)
                runs += 1
                for key in counts:
                    counts[key] += bool(getattr(result, key))
                if not result.ok:
                    failures[prompt] = failures.get(prompt, 0) + 1
        entry = {"pass_rate": round(counts["ok"] / runs, 3),
                 **{f"{k}_rate": round(v / runs, 3) for k, v in counts.items() if k != "ok"},
                 "runs": runs, "seconds": round(time.perf_counter() - started, 1),
                 "failures_per_prompt": failures}
        report["drawers"][drawer] = entry
        print(json.dumps({drawer: entry}), flush=True, file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
