"""`imagesynth train ...`: train model families with the shared loop (resumable, budgeted)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import ConfigError
from . import app

train_app = typer.Typer(help="Train models (resumable: rerun the same command to continue).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")
console = Console(soft_wrap=True)


def loop_overrides(*, precision: str, seed: int, **optional) -> dict:
    """Shared training-loop settings from the command line; None keeps the preset's default."""
    return {"precision": precision, "seed": seed,
            **{key: value for key, value in optional.items() if value is not None}}


@train_app.command("clip")
def train_clip_command(
    data: Path = typer.Option(..., help="Captioned image folder (e.g. from `imagesynth data`)."),
    out: Path = typer.Option(Path("runs/clip"), help="Run folder: checkpoints, logs, model/."),
    preset: str = typer.Option("emoji", help="Architecture + schedule preset: tiny, shapes, emoji."),
    steps: Optional[int] = typer.Option(None, help="Total optimiser steps (preset default if omitted)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (preset default if omitted)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    precision: str = typer.Option("fp32", help="fp32, bf16 (CPU/GPU autocast) or fp16 (CUDA)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (with a checkpoint) after this long."),
    seed: int = typer.Option(0, help="Seed for initial weights, data order and caption choice."),
    val_data: Optional[Path] = typer.Option(None, help="Validation folder (default: the val split of --data)."),
    augment: bool = typer.Option(True, help="Random zoom/shift of training images."),
    text_projection: str = typer.Option("mlp", help="mlp (preset's hidden layer) or linear (one matrix)."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (preset default 0)."),
    adversarial_eps: float = typer.Option(0.0, help="Adversarial training: perturb images within this L-inf radius (pixels in [0,1], e.g. 0.0157 = 4/255); 0 = off."),
) -> None:
    """Train a CLIP (locked MiniLM text features + image tower) on a captioned folder."""
    from ..families.clip import train_clip

    if text_projection not in ("mlp", "linear"):
        raise ConfigError(f"unknown text projection {text_projection!r}", field="text_projection",
                          fix="use mlp or linear")

    overrides = loop_overrides(precision=precision, seed=seed, max_steps=steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               max_minutes=max_minutes, weight_decay=weight_decay)
    result = train_clip(data, out, preset=preset, overrides=overrides, val_data=val_data,
                        augment=augment, adversarial_eps=adversarial_eps,
                        clip_overrides={"text_hidden": 0} if text_projection == "linear" else None)
    state = "finished" if result.stopped == "finished" else "paused (rerun to resume)"
    console.print(f"[green]{state}[/] after {result.steps} steps in {result.seconds:.0f} s; "
                  f"model written to {result.model_dir}")
    for key, value in result.metrics.items():
        console.print(f"  {key}: {value:.3f}")


def report_run(result) -> None:
    """Print how a training run ended and its final metrics."""
    state = "finished" if result.stopped == "finished" else "paused (rerun to resume)"
    console.print(f"[green]{state}[/] after {result.steps} steps in {result.seconds:.0f} s; "
                  f"model written to {result.model_dir}")
    for key, value in result.metrics.items():
        console.print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
