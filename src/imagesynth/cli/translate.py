"""`imagesynth train translate` and `imagesynth translate`: pix2pix / CycleGAN image translation."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from . import app
from .train import loop_overrides, report_run, train_app

console = Console(soft_wrap=True)


@train_app.command("translate")
def train_translate_command(
    data_b: Optional[Path] = typer.Option(None, "--data-b", "--data", help="Target domain B: a folder of images (the only folder --task colorize / edges2image needs)."),
    data_a: Optional[Path] = typer.Option(None, "--data-a", help="Input domain A: a folder of images (--task translate)."),
    method: str = typer.Option("pix2pix", help="pix2pix (paired: L1 + conditional PatchGAN) or cyclegan (unpaired: two mappings, cycle + identity losses)."),
    task: str = typer.Option("translate", help="translate (A -> B), colorize (grey -> colour) or edges2image (Canny edges -> image)."),
    pair_by: str = typer.Option("stem", help="Key that pairs A and B images: stem (file name) or a captions.jsonl field such as unified."),
    select_a: Optional[str] = typer.Option(None, help="Only A images whose captions.jsonl FIELD=VALUE, e.g. style=twitter."),
    select_b: Optional[str] = typer.Option(None, help="Only B images whose captions.jsonl FIELD=VALUE, e.g. style=google."),
    adversarial: bool = typer.Option(True, help="--no-adversarial: pix2pix without its discriminator (the L1-only U-Net baseline)."),
    gan_loss: Optional[str] = typer.Option(None, help="bce or lsgan (default: pix2pix bce, cyclegan lsgan)."),
    generator: Optional[str] = typer.Option(None, help="unet or resnet (default: pix2pix unet, cyclegan resnet)."),
    lambda_l1: float = typer.Option(100.0, help="pix2pix: weight of the L1 term."),
    lambda_cycle: float = typer.Option(10.0, help="CycleGAN: weight of the cycle-consistency terms."),
    lambda_identity: float = typer.Option(0.5, help="CycleGAN: identity terms' weight, as a fraction of lambda_cycle."),
    augment: bool = typer.Option(True, help="Random jitter (shift up to 1/16 of the side) and mirroring, alike for both images of a pair."),
    held_out: float = typer.Option(0.1, help="Share of keys held out (by hash) for evaluation."),
    out: Path = typer.Option(Path("runs/translate"), help="Run folder: checkpoints, logs, model/."),
    preset: str = typer.Option("emoji32", help="Architecture + schedule preset: tiny, emoji32, emoji64."),
    steps: Optional[int] = typer.Option(None, help="Total optimiser steps (preset default if omitted)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (preset default if omitted)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Learning rate of every network (preset default 2e-4)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (with a checkpoint) after this long; rerun to resume."),
    resume: bool = typer.Option(True, help="Continue the run in --out if it has one (--no-resume: refuse a used folder)."),
    seed: int = typer.Option(0, help="Seed for initial weights, data order, dropout, jitter and CycleGAN's B draws."),
) -> None:
    """Train an image-to-image translator (pix2pix or CycleGAN) on the shared loop (resumable)."""
    from ..config import from_dict
    from ..errors import ConfigError
    from ..families.translate import TranslateConfig, train_translate

    if data_b is None:
        raise ConfigError("is required", field="data_b", fix="pass --data-b DIR (or --data DIR)")
    settings = from_dict(TranslateConfig, {
        "method": method, "task": task, "adversarial": adversarial, "gan_loss": gan_loss,
        "generator": generator, "lambda_l1": lambda_l1, "lambda_cycle": lambda_cycle,
        "lambda_identity": lambda_identity, "augment": augment, "pair_by": pair_by,
        "select_a": select_a, "select_b": select_b, "held_out_fraction": held_out})
    overrides = loop_overrides(precision="fp32", seed=seed, max_steps=steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               max_minutes=max_minutes)
    report_run(train_translate(data_b, out, data_a=data_a, settings=settings, preset=preset,
                               overrides=overrides, resume=resume))


@app.command("translate")
def translate_command(
    images: List[Path] = typer.Argument(..., help="Input images (resized and centre-cropped to the model's size)."),
    model: str = typer.Option(..., help="Translation model (name or RUN/model folder of `train translate`)."),
    out: Path = typer.Option(Path("translated"), help="Output folder: one PNG per input, named after it."),
    direction: str = typer.Option("a2b", help="a2b, or b2a for a CycleGAN's reverse mapping."),
    seed: Optional[int] = typer.Option(None, help="Apply pix2pix's dropout noise, image i from seed + i (default: none, deterministic)."),
    derive_input: bool = typer.Option(False, help="Make the model's input from each image first: grey (colorize) or Canny edges (edges2image)."),
) -> None:
    """Translate images with a trained model; each PNG carries its recipe (model and input hashes)."""
    from ..config import from_dict
    from ..errors import ConfigError
    from ..families.translate import TranslateImagesConfig, translate_images
    from ..io.pngmeta import save_png

    config = from_dict(TranslateImagesConfig, {
        "model": model, "images": [str(p) for p in images], "direction": direction,
        "seed": seed, "derive_input": derive_input})
    names = [f"{Path(p).stem}.png" for p in config.images]
    if len(set(names)) != len(names):
        raise ConfigError("two inputs share a file name", field="images",
                          fix="translate images with the same name in separate runs")
    results, recipes = translate_images(config)
    out.mkdir(parents=True, exist_ok=True)
    for picture, recipe, name in zip(results, recipes, names):
        save_png(picture, out / name, recipe)
        console.print(f"wrote {out / name}")
