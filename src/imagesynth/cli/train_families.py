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
) -> None:
    """Train a caption-conditional GAN (StyleGAN-lite generator, projection discriminator)."""
    from ..families.gan import GANObjectiveConfig, train_gan

    overrides = loop_overrides(precision="fp32", seed=seed, max_steps=steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               max_minutes=max_minutes)
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
) -> None:
    """Train a Glow normalizing flow by exact maximum likelihood (bits/dim)."""
    from ..families.flow import train_flow

    overrides = loop_overrides(precision="fp32", seed=seed, max_steps=steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               max_minutes=max_minutes)
    report_run(train_flow(data, out, preset=preset, overrides=overrides))
