"""`imagesynth train controlnet` and `imagesynth control-map`: ControlNet training and maps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from . import app
from .train import loop_overrides, report_run, train_app

console = Console(soft_wrap=True)


@train_app.command("controlnet")
def train_controlnet_command(
    model: str = typer.Option("shapes", help="Base diffusion model (name or folder); frozen."),
    data: Path = typer.Option(..., help="Data folder with condition maps (`data shapes --with-conditions`)."),
    condition: str = typer.Option(..., help="layout, edges or scribble."),
    out: Path = typer.Option(Path("runs/controlnet"), help="Run folder: checkpoints, logs, model/."),
    steps: Optional[int] = typer.Option(None, help="Total optimiser steps (default 20000)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (default 32)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 2e-4, constant after warm-up)."),
    precision: str = typer.Option("fp32", help="fp32, bf16 (CPU/GPU autocast) or fp16 (CUDA)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (with a checkpoint) after this long; rerun to resume."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints (default 200)."),
    seed: int = typer.Option(0, help="Seed for the data order and noise."),
) -> None:
    """Train a ControlNet on a frozen diffusion model (resumable: rerun to continue)."""
    from ..families.controlnet import train_controlnet

    overrides = loop_overrides(precision=precision, seed=seed, max_steps=steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               max_minutes=max_minutes, checkpoint_every=checkpoint_every)
    report_run(train_controlnet(model, data, condition, out, overrides=overrides))


@app.command("control-map")
def control_map_command(
    kind: str = typer.Argument(..., help="edges (Canny) or scribble (thick simplified edges)."),
    image: Path = typer.Argument(..., help="Any image (PNG, JPEG, WEBP)."),
    out: Path = typer.Option(..., help="Where to write the map (PNG)."),
) -> None:
    """Make a ControlNet condition map from an image (white lines on black)."""
    from ..data.conditions import control_map
    from ..errors import UsageError
    from ..io.images import open_image

    if out.suffix.lower() != ".png":
        raise UsageError(f"{out.name} is not a .png file name", field="out",
                         fix="write the map as MAP.png")
    result = control_map(kind, open_image(image, mode="RGB", field="image"))
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save(out, format="PNG")
    console.print(f"wrote {out} ({result.size[0]}x{result.size[1]} {kind} map)")
