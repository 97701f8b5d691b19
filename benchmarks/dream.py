"""CLIP-guided synthesis speed and held-out score trajectories, per drawer.

Prints JSON: optimisation iterations/s (median of repeats) at the given size and cutout count,
and the score trajectory of scorer A (optimised) and held-out scorer B for each drawer. Example:
  OMP_NUM_THREADS=2 python benchmarks/dream.py --clip models/shapes-clip \\
      --held-out-clip models/emoji-clip --size 64 --cutouts 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from imagesynth.clip.foreign import load_scorer
from imagesynth.guided import DreamConfig, dream


def iterations_per_second(config: DreamConfig, scorer, decoder, repeats: int,
                          warmup: int = 3) -> list[float]:
    """Steps/s after `warmup` steps, one figure per repeat (timed between step callbacks)."""
    rates = []
    for _ in range(repeats):
        stamps: list[float] = []
        dream(config, scorer=scorer, decoder=decoder,
              on_step=lambda step, image, loss: stamps.append(time.perf_counter()))
        timed = stamps[warmup - 1:]
        rates.append((len(timed) - 1) / (timed[-1] - timed[0]))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", required=True, help="scorer A: model name, folder, hf:, openclip:")
    parser.add_argument("--held-out-clip", help="scorer B for the trajectories")
    parser.add_argument("--prompt", default="a red circle")
    parser.add_argument("--drawers", default="pixels,fourier,pixelart",
                        help="comma list; add 'decoder' together with --decoder")
    parser.add_argument("--decoder", help="autoencoder name or folder for the decoder drawer")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cutouts", type=int, default=16)
    parser.add_argument("--speed-steps", type=int, default=23)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trajectory-steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    scorer = load_scorer(args.clip)
    held_out = load_scorer(args.held_out_clip) if args.held_out_clip else None
    decoder = None
    if args.decoder:
        from imagesynth.nets.autoencoder import load_autoencoder
        decoder = load_autoencoder(args.decoder)
    report: dict = {
        "benchmark": "dream", "clip": args.clip, "held_out_clip": args.held_out_clip,
        "prompt": args.prompt, "size": args.size, "cutouts": args.cutouts,
        "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "drawers": {},
    }
    for drawer in [d.strip() for d in args.drawers.split(",") if d.strip()]:
        base = dict(prompt=args.prompt, drawer=drawer, width=args.size, height=args.size,
                    cutouts=args.cutouts, scorer=args.clip, seed=args.seed,
                    decoder=args.decoder, eval_every=args.eval_every)
        rates = iterations_per_second(DreamConfig(steps=args.speed_steps, **base), scorer,
                                      decoder, args.repeats)
        entry = {"iterations_per_second": round(statistics.median(rates), 2),
                 "repeats": [round(r, 2) for r in rates]}
        if args.trajectory_steps:
            result = dream(DreamConfig(steps=args.trajectory_steps, **base), scorer=scorer,
                           held_out_scorer=held_out, decoder=decoder)
            entry["trajectory"] = [{k: round(v, 4) if isinstance(v, float) else v
                                    for k, v in row.items()} for row in result.history]
            entry["adversarial"] = result.adversarial
        report["drawers"][drawer] = entry
        print(json.dumps({drawer: entry}), flush=True, file=__import__("sys").stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
