"""ShapesWorld checker pass rate and sampling speed of an autoregressive (`ar`) model.

Prompts: "a COLOUR SHAPE" for every palette colour and shape except the held-out pairs (the
pairs the model was trained on), each with seeds 0..S-1 in one batch, judged from the pixels by
`imagesynth.data.check`. Also reports the model folder's recorded tokenizer val PSNR, codebook
usage/perplexity and transformer val loss, and generation images/s at batch 32 (CPU unless
--device says otherwise). Prints JSON. Example:
    python benchmarks/ar_shapes.py --model /tmp/ar-run/out/model --seeds 4 --guidance 3
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from imagesynth.data import HELD_OUT_PAIRS, PALETTE, SHAPES, check
from imagesynth.diffusion.noise import generators_from_seeds
from imagesynth.families.ar import load_ar
from imagesynth.train.datasets import to_uint8
from imagesynth.registry import Registry


def seen_single_prompts() -> list[str]:
    """Single-object prompts of every colour-shape pair the training data shows."""
    return [f"a {colour} {shape}" for colour in PALETTE for shape in SHAPES
            if (colour, shape) not in HELD_OUT_PAIRS]


def main() -> None:
    """Parse flags, measure, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="ar model folder or registry name")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--speed-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_ar(args.model, device=args.device)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   guidance_scale=args.guidance)

    counts = {"ok": 0, "count_ok": 0, "colour_ok": 0, "shape_ok": 0}
    per_prompt = {}
    started = time.perf_counter()
    prompts = seen_single_prompts()
    for prompt in prompts:
        images = model.sample(args.seeds, generators_from_seeds(list(range(args.seeds))),
                              prompt, **options)
        arrays = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
        verdicts = [check(array, prompt) for array in arrays]
        for key in counts:
            counts[key] += sum(bool(getattr(v, key)) for v in verdicts)
        per_prompt[prompt] = sum(v.ok for v in verdicts)
    check_seconds = time.perf_counter() - started
    total = len(prompts) * args.seeds

    batch = args.speed_batch
    model.sample(2, generators_from_seeds([0, 1]), "a red circle", **options)  # warm-up
    timings = []
    for repeat in range(2):
        seeds = list(range(repeat * batch, (repeat + 1) * batch))
        tick = time.perf_counter()
        model.sample(batch, generators_from_seeds(seeds), "a red circle", **options)
        timings.append(time.perf_counter() - tick)

    recorded = Registry().get(str(args.model)).config()  # what training measured
    evaluation = recorded.get("eval", {})
    print(json.dumps({
        "model": str(args.model), "settings": options, "seeds": args.seeds,
        "prompts": len(prompts), "images": total,
        "pass_rate": counts["ok"] / total,
        "rates": {k: v / total for k, v in counts.items() if k != "ok"},
        "passed_per_prompt": per_prompt,
        "tokenizer_psnr_val": evaluation.get("psnr_val"),
        "codebook_usage_val": evaluation.get("codebook_usage_val"),
        "codebook_usage_train": evaluation.get("codebook_usage_train"),
        "codebook_perplexity_train": evaluation.get("perplexity_train"),
        "transformer_val_loss": evaluation.get("val_loss"),
        "steps": {"tokenizer": recorded.get("tokenizer_steps"),
                  "transformer": recorded.get("steps")},
        "images_per_second": batch / min(timings), "speed_batch": batch,
        "device": args.device, "threads": torch.get_num_threads(),
        "check_seconds": check_seconds,
    }, indent=2))


if __name__ == "__main__":
    main()
