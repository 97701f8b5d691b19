"""`imagesynth train autoencoder`: KL autoencoders for latent diffusion and dreaming (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .train import console, loop_overrides, train_app


@train_app.command("autoencoder")
def train_autoencoder_command(
    data: Path = typer.Option(..., help="Image folder (e.g. from `imagesynth data`)."),
    out: Path = typer.Option(Path("runs/autoencoder"), help="Run folder: checkpoints, logs, model/."),
    preset: str = typer.Option(
        "emoji-f4", help="Architecture + schedule preset: tiny, shapes-f4, emoji-f4 (latent "
        "grids), tiny-v8, shapes-v32 (vector VAEs)."),
    steps: Optional[int] = typer.Option(None, help="Total optimiser steps (preset default if omitted)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (preset default if omitted)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    precision: str = typer.Option("fp32", help="fp32, bf16 (CPU/GPU autocast) or fp16 (CUDA)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (with a checkpoint) after this long."),
    seed: int = typer.Option(0, help="Seed for initial weights, data order and posterior samples."),
    reconstruction: str = typer.Option("l2", help="Reconstruction loss: l2 (mean squared) or l1."),
    kl_weight: Optional[float] = typer.Option(
        None, help="Weight of the KL term relative to the per-pixel loss (default: 1e-6 for "
        "latent grids, 0.03 for vector VAEs)."),
    fd_clip: Optional[str] = typer.Option(
        None, help="CLIP (name or folder) whose image tower gives FD_clip_<name>; "
        "default: FD on 8x8-pooled raw pixels."),
) -> None:
    """Train a KL autoencoder or vector VAE; report PSNR, FD and the latent scaling factor."""
    from ..families.autoencoder import preset_loss, train_autoencoder

    overrides = loop_overrides(precision=precision, seed=seed, max_steps=steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               max_minutes=max_minutes)
    loss = preset_loss(preset, reconstruction=reconstruction, kl_weight=kl_weight)
    result = train_autoencoder(data, out, preset=preset, overrides=overrides, loss=loss,
                               fd_clip=fd_clip)
    state = "finished" if result.stopped == "finished" else "paused (rerun to resume)"
    console.print(f"[green]{state}[/] after {result.steps} steps in {result.seconds:.0f} s; "
                  f"model written to {result.model_dir}")
    for key, value in result.metrics.items():
        console.print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
