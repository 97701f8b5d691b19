"""`imagesynth train instruct` and `imagesynth edit`: instruction editing (InstructPix2Pix)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from . import app
from .train import loop_overrides, report_run, train_app

console = Console(soft_wrap=True)


@train_app.command("instruct")
def train_instruct_command(
    model: str = typer.Option("shapes", help="Base diffusion model (name or folder), pixel space."),
    data: Path = typer.Option(..., help="Edit triples (`imagesynth data shapes-edits`)."),
    out: Path = typer.Option(Path("runs/instruct"), help="Run folder: checkpoints, logs, model/."),
    steps: Optional[int] = typer.Option(None, help="Total optimiser steps (default 20000)."),
    batch_size: Optional[int] = typer.Option(None, help="Triples per step (default 32)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 2e-4, constant after warm-up)."),
    precision: str = typer.Option("fp32", help="fp32, bf16 (CPU/GPU autocast) or fp16 (CUDA)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (with a checkpoint) after this long; rerun to resume."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints (default 100)."),
    seed: int = typer.Option(0, help="Seed for the data order, noise and condition dropout."),
) -> None:
    """Fine-tune a diffusion model into an instruction-editing model (resumable: rerun)."""
    from ..families.instruct import train_instruct

    overrides = loop_overrides(precision=precision, seed=seed, max_steps=steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               max_minutes=max_minutes, checkpoint_every=checkpoint_every)
    report_run(train_instruct(model, data, out, overrides=overrides))


@app.command("edit")
def edit_command(
    image: Path = typer.Argument(..., help="Source image (the model's size, e.g. 32x32)."),
    instruction: str = typer.Argument(..., help='What to change, e.g. "make the circle blue".'),
    model: str = typer.Option(..., help="Instruction model folder (RUN/model of `train instruct`)."),
    image_guidance: Optional[float] = typer.Option(None, help="Source-image guidance s_I >= 0 (model default 1.5): higher keeps more of the source."),
    guidance: Optional[float] = typer.Option(None, help="Instruction guidance s_T >= 0 (model default)."),
    steps: Optional[int] = typer.Option(None, help="Sampler steps (model default)."),
    sampler: Optional[str] = typer.Option(None, help="euler, heun, euler_ancestral, dpmpp_2m, ddpm (model default)."),
    seed: int = typer.Option(0, help="Seed of the first image; image i uses seed + i."),
    n: int = typer.Option(1, help="Number of images."),
    out: Path = typer.Option(Path("edited.png"), help="Output FILE.png (FILE-<seed>.png for several)."),
) -> None:
    """Edit an image by an instruction (InstructPix2Pix dual guidance); the PNG carries its recipe."""
    from ..config import from_dict
    from ..editing import EditConfig, edit
    from ..io.pngmeta import save_png
    from .generate import _output_paths

    config = from_dict(EditConfig, {
        "image": str(image), "instruction": instruction, "model": model, "seed": seed, "n": n,
        "steps": steps, "sampler": sampler, "guidance": guidance,
        "image_guidance": image_guidance})
    paths = _output_paths(out, instruction, [seed + i for i in range(n)])  # checks --out first
    result = edit(config)
    for picture, recipe, path in zip(result.images, result.recipes, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(picture, path, recipe)
        console.print(f"wrote {path}")
