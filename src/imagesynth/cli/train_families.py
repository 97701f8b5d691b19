"""`imagesynth train gan | flow`: the other generator families on the shared loop (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .train import loop_overrides, report_run, train_app


@train_app.command("gan")
def train_gan_command(
    data: Path = typer.Option(..., help="Captioned image folder (e.g. from `imagesynth data`)."),
    out: Path = typer.Option(Path("runs/gan"), help="Run folder: checkpoints, logs, model/."),
    preset: str = typer.Option("shapes", help="Architecture + schedule preset: tiny, shapes."),
    steps: Optional[int] = typer.Option(None, help="Total optimiser steps (preset default if omitted)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (preset default if omitted)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Learning rate of both players."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (with a checkpoint) after this long."),
    seed: int = typer.Option(0, help="Seed for initial weights, data order, z and augmentations."),
    r1_gamma: float = typer.Option(1.0, help="Weight of the R1 penalty on real images."),
    augment: str = typer.Option("translation,cutout", help="DiffAugment: comma list of translation, cutout, color ('' = none)."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per step and process (the global --batch-size is kept; saves memory)."),
) -> None:
    """Train a caption-conditional GAN (StyleGAN-lite generator, projection discriminator)."""
    from ..families.gan import GANObjectiveConfig, train_gan

    overrides = loop_overrides(precision="fp32", seed=seed, max_steps=steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               max_minutes=max_minutes, grad_accum=grad_accum)
    settings = GANObjectiveConfig(r1_gamma=r1_gamma, augment=tuple(
        a.strip() for a in augment.split(",") if a.strip()))
    report_run(train_gan(data, out, preset=preset, overrides=overrides, objective=settings))


@train_app.command("flow")
def train_flow_command(
    data: Path = typer.Option(..., help="Image folder (e.g. from `imagesynth data`)."),
    out: Path = typer.Option(Path("runs/flow"), help="Run folder: checkpoints, logs, model/."),
    preset: str = typer.Option("shapes", help="Architecture + schedule preset: tiny, shapes."),
    steps: Optional[int] = typer.Option(None, help="Total optimiser steps (preset default if omitted)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (preset default if omitted)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (with a checkpoint) after this long."),
    seed: int = typer.Option(0, help="Seed for initial weights, data order and dequantisation."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per step and process (the global --batch-size is kept; saves memory)."),
) -> None:
    """Train a Glow normalizing flow by exact maximum likelihood (bits/dim)."""
    from ..families.flow import train_flow

    overrides = loop_overrides(precision="fp32", seed=seed, max_steps=steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               max_minutes=max_minutes, grad_accum=grad_accum)
    report_run(train_flow(data, out, preset=preset, overrides=overrides))


@train_app.command("ar")
def train_ar_command(
    data: Path = typer.Option(..., help="Captioned image folder (e.g. from `imagesynth data`)."),
    out: Path = typer.Option(Path("runs/ar"), help="Run folder: tokenizer/, checkpoints, logs, model/."),
    preset: str = typer.Option("shapes", help="Architecture + schedule preset: tiny, shapes."),
    steps: Optional[int] = typer.Option(None, help="Transformer steps (preset default if omitted)."),
    tokenizer_steps: Optional[int] = typer.Option(None, help="VQ tokenizer steps (preset default if omitted)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step, both stages (preset default if omitted)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate, both stages."),
    max_minutes: Optional[float] = typer.Option(None, help="Transformer stage: stop (with a checkpoint) after this long."),
    tokenizer_max_minutes: Optional[float] = typer.Option(None, help="Tokenizer stage: stop and freeze it after this long."),
    seed: int = typer.Option(0, help="Seed for initial weights, data order, caption choice and code restarts."),
) -> None:
    """Train a DALL-E-style model: a VQ tokenizer, then a caption-prefixed transformer over its tokens."""
    from ..families.ar import train_ar

    shared = {"batch_size": batch_size, "learning_rate": learning_rate}
    overrides = loop_overrides(precision="fp32", seed=seed, max_steps=steps,
                               max_minutes=max_minutes, **shared)
    tokenizer = loop_overrides(precision="fp32", seed=seed, max_steps=tokenizer_steps,
                               max_minutes=tokenizer_max_minutes, **shared)
    report_run(train_ar(data, out, preset=preset, overrides=overrides,
                        tokenizer_overrides=tokenizer))
