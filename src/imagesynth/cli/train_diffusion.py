"""`imagesynth train diffusion`: a text-to-image diffusion model on a captioned folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .train import console, loop_overrides, train_app


@train_app.command("diffusion")
def train_diffusion_command(
    data: Path = typer.Option(..., help="Captioned image folder (e.g. from `imagesynth data`)."),
    out: Path = typer.Option(Path("runs/diffusion"), help="Run folder: checkpoints, logs, samples/, model/."),
    preset: str = typer.Option("shapes", help="Model + schedule preset: tiny, shapes (32 px pixels), shapes-xy (shapes + coordinate maps), emoji (64 px latents)."),
    steps: Optional[int] = typer.Option(None, help="Total optimiser steps (preset default if omitted)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (preset default if omitted)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (with a checkpoint) after this long; rerun to resume."),
    autoencoder: Optional[str] = typer.Option(None, help="Autoencoder name or folder: train in its latent space."),
    precision: str = typer.Option("fp32", help="fp32, bf16 (CPU/GPU autocast) or fp16 (CUDA)."),
    sample_every: Optional[int] = typer.Option(None, help="Write a sample grid to RUN/samples every N steps."),
    seed: int = typer.Option(0, help="Seed for initial weights, data order, noise and caption dropout."),
    init_from: Optional[str] = typer.Option(None, help="Fine-tune: start from this diffusion model's weights (name or folder)."),
    text_encoder: Optional[str] = typer.Option(None, help="minilm (default), minilm+words (adds word embeddings: tells left from right) or a local text-model folder."),
    train_sigma_mean: Optional[float] = typer.Option(None, help="Training noise: mean of ln(sigma) (EDM P_mean, default -1.2; higher practises layout)."),
    train_sigma_std: Optional[float] = typer.Option(None, help="Training noise: std of ln(sigma) (EDM P_std, default 1.2)."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per step and process (the global --batch-size is kept; saves memory)."),
) -> None:
    """Train a text-conditioned EDM diffusion model (pixel or latent space) with the shared loop."""
    from ..families.diffusion import train_diffusion

    overrides = loop_overrides(precision=precision, seed=seed, max_steps=steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               max_minutes=max_minutes, sample_every=sample_every,
                               grad_accum=grad_accum)
    settings = {key: value for key, value in (("text_encoder", text_encoder),
                                              ("train_sigma_mean", train_sigma_mean),
                                              ("train_sigma_std", train_sigma_std))
                if value is not None}
    result = train_diffusion(data, out, preset=preset, overrides=overrides, autoencoder=autoencoder,
                             init_from=init_from, model_overrides=settings)
    state = "finished" if result.stopped == "finished" else "paused (rerun the same command to resume)"
    loss = result.metrics.get("loss")
    console.print(f"[green]{state}[/] after {result.steps} steps in {result.seconds:.0f} s"
                  + (f", last loss {loss:.4f}" if loss is not None else "")
                  + f"; model written to {result.model_dir}")


@train_app.command("export")
def train_export_command(
    run: Path = typer.Argument(..., help="Run folder of `imagesynth train diffusion` (its --out)."),
    out: Optional[Path] = typer.Option(None, help="Model folder to write (default RUN/model-step-N)."),
) -> None:
    """Write a diffusion run's newest checkpoint (EMA weights) as a model folder, mid-training."""
    from ..families.diffusion import export_checkpoint

    folder, step = export_checkpoint(run, out)
    console.print(f"[green]exported[/] step {step} to {folder}; try it with "
                  f"`imagesynth generate PROMPT --model {folder}`")
