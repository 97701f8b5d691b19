"""Twemoji -> Noto emoji translation (pix2pix or CycleGAN, or colourisation) on held-out emoji.

Trains a translator on the emoji both styles draw (paired by the `unified` code point; the held
out emoji, a hash-chosen 10 % of the code points, are never trained on), or loads one with
`--model`, then scores its translations of the held-out twitter emoji against the true google
ones, beside the identity baseline (the input copied) and, with `--l1-baseline`, the same U-Net
trained with L1 alone (pix2pix's adversarial term must earn its place):
- pixel L1 (in [0, 1] units) and PSNR;
- cosine between the emoji-clip image embeddings of the output and of the true google emoji;
- Fréchet distance between output and target sets in the same feature space (`--extractor`);
- CycleGAN: cycle reconstruction errors; `--task colorize`: chroma error against the grey input.
Prints JSON. Example (the bundled model's figures; hours on 2 CPU cores):
    imagesynth data emoji --out data/emoji
    python benchmarks/translate_emoji.py --data data/emoji --out runs/twitter2google \
        --method pix2pix --preset emoji32 --l1-baseline
A quick end-to-end check: add `--steps 3`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from imagesynth.families.translate import (TranslateConfig, evaluate_translation,
                                           load_translate, train_translate)
from imagesynth.families.translate_data import load_translation_data


def settings_for(args, adversarial: bool = True) -> TranslateConfig:
    """The emoji pairing: twitter (A) and google (B) halves of one folder, by code point."""
    colour = args.task == "colorize"
    return TranslateConfig(method=args.method, task=args.task, adversarial=adversarial,
                           pair_by="unified", select_a=None if colour else "style=twitter",
                           select_b="style=google")


def train_one(args, settings: TranslateConfig, out: Path):
    """Train (or resume) one run; the model folder."""
    overrides = {"seed": args.seed}
    if args.steps is not None:
        overrides["max_steps"] = args.steps
    if args.max_minutes is not None:
        overrides["max_minutes"] = args.max_minutes
    data_a = None if settings.task != "translate" else args.data
    return train_translate(args.data, out, data_a=data_a, settings=settings, preset=args.preset,
                           overrides=overrides, show_progress=not args.quiet).model_dir


def clip_embedding(name: str):
    """Unit-norm image embeddings of an imagesynth CLIP, images resized to its input size."""
    from imagesynth.clip import load_clip

    scorer = load_clip(name)
    size = scorer.model.config.image_size

    @torch.no_grad()
    def embed(images: torch.Tensor) -> torch.Tensor:  # [N, 3, S, S] in [0, 1]
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bicubic",
                                   align_corners=False, antialias=True).clamp(0, 1)
        return torch.cat([scorer.embed_image(images[i:i + 256]).cpu()
                          for i in range(0, len(images), 256)])

    return embed


def split(figures: dict) -> tuple[dict, dict]:
    """(model figures, identity-baseline figures) from evaluate_translation's one dict."""
    model = {k: v for k, v in figures.items() if not k.startswith("identity_")}
    identity = {k[len("identity_"):]: v for k, v in figures.items() if k.startswith("identity_")}
    return model, identity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/emoji", help="`imagesynth data emoji` folder")
    parser.add_argument("--out", default="runs/translate-emoji", help="run folder")
    parser.add_argument("--model", help="evaluate this model instead of training one")
    parser.add_argument("--method", default="pix2pix", choices=("pix2pix", "cyclegan"))
    parser.add_argument("--task", default="translate", choices=("translate", "colorize"))
    parser.add_argument("--preset", default="emoji32")
    parser.add_argument("--steps", type=int, help="training steps (preset default if omitted)")
    parser.add_argument("--max-minutes", type=float, help="training time budget per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--l1-baseline", action="store_true",
                        help="also train and score the same U-Net with L1 alone")
    parser.add_argument("--embed", default="emoji-clip", help="CLIP for the cosine ('' = none)")
    parser.add_argument("--extractor", default="clip:emoji-clip",
                        help="feature extractor for the Fréchet distance ('' = none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    started = time.perf_counter()
    out = Path(args.out)

    model_dir = Path(args.model) if args.model else train_one(args, settings_for(args), out)
    model = load_translate(model_dir)
    settings = model.settings
    data = load_translation_data(
        args.data, args.data if settings.task == "translate" else None, task=settings.task,
        paired=True, image_size=model.image_size, pair_by=settings.pair_by,
        select_a=settings.select_a, select_b=settings.select_b,
        held_out_fraction=settings.held_out_fraction)
    embed = clip_embedding(args.embed) if args.embed else None
    extractor = None
    if args.extractor:
        from imagesynth.metrics.extractors import create_extractor

        extractor = create_extractor(args.extractor)
    figures, identity = split(evaluate_translation(model, data.held_out, embed, extractor))
    config = json.loads((model_dir / "config.json").read_text())
    report = {"data": args.data, "model_dir": str(model_dir), "method": settings.method,
              "task": settings.task, "preset": config.get("preset"), "steps": config.get("steps"),
              "image_size": model.image_size, "held_out_pairs": len(data.held_out),
              "counts": data.counts, "embedding": args.embed or None,
              "fd_extractor": extractor.distance_name if extractor else None,
              "model": figures, "identity": identity}
    if args.l1_baseline:
        if settings.method != "pix2pix":
            parser.error("--l1-baseline compares against pix2pix's U-Net")
        baseline_dir = train_one(args, settings_for(args, adversarial=False), out / "l1-baseline")
        baseline = load_translate(baseline_dir)
        report["l1_baseline"], _ = split(evaluate_translation(baseline, data.held_out, embed,
                                                              extractor))
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
