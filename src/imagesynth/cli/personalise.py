"""`imagesynth finetune lora|dreambooth` and `imagesynth lora fuse|info`: personalise a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from . import app
from .train import console, loop_overrides

finetune_app = typer.Typer(help="Personalise a diffusion model (LoRA, DreamBooth) on the shared "
                                "loop; rerun the same command to resume.", no_args_is_help=True)
lora_app = typer.Typer(help="Work with LoRA files (diffusers or kohya-ss layout).",
                       no_args_is_help=True)
app.add_typer(finetune_app, name="finetune")
app.add_typer(lora_app, name="lora")


def _lora_settings(rank: int, alpha: Optional[float], targets: str):
    from ..families.personalise import LoraSettings

    return LoraSettings(rank=rank, alpha=alpha, targets=targets)


def _report(result) -> None:
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    state = "finished" if result.stopped == "finished" else "paused (rerun the same command to resume)"
    loss = result.metrics.get("loss")
    console.print(f"[green]{state}[/] after {result.steps} steps in {result.seconds:.0f} s "
                  f"({result.trainable_parameters:,} trainable parameters"
                  + (f", last loss {loss:.4f}" if loss is not None else "")
                  + f"); wrote {result.output}")


@finetune_app.command("lora")
def finetune_lora_command(
    model: str = typer.Option(..., help="Base diffusion model: name or folder."),
    data: Path = typer.Option(..., help="Captioned image folder (captions.jsonl, metadata.csv or NAME.txt)."),
    out: Path = typer.Option(..., help="Run folder: checkpoints, log, lora.safetensors."),
    rank: int = typer.Option(4, help="LoRA rank."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha; the update is scaled by alpha/rank (default: the rank)."),
    targets: str = typer.Option("attn", help="attn (attention projections) or all (every block layer)."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps (default 300)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (default 16)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 1e-3)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (with a checkpoint) after this long; rerun to resume."),
    condition_dropout: float = typer.Option(0.0, help="Fraction of steps trained on the empty prompt."),
    precision: str = typer.Option("fp32", help="fp32, bf16 (CPU/GPU autocast) or fp16 (CUDA)."),
    seed: int = typer.Option(0, help="Seed for the adapter's init, data order and noise."),
) -> None:
    """Train a LoRA for a diffusion model; writes a diffusers-format LoRA file."""
    from ..families.personalise import finetune_lora

    settings = _lora_settings(rank, alpha, targets)
    overrides = loop_overrides(precision=precision, seed=seed, max_steps=steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               max_minutes=max_minutes)
    _report(finetune_lora(model, data, out, settings, overrides, condition_dropout))


@finetune_app.command("dreambooth")
def finetune_dreambooth_command(
    model: str = typer.Option(..., help="Base diffusion model: name or folder."),
    images: Path = typer.Option(..., help="Folder with 3 or more images of the subject."),
    token: str = typer.Option("", help='Rare word that will name the subject, e.g. "sks".'),
    class_prompt: str = typer.Option(..., help='The subject\'s class, e.g. "a circle"; the instance prompt is "a TOKEN circle".'),
    out: Path = typer.Option(..., help="Run folder: checkpoints, class images, the result."),
    prior_preservation: bool = typer.Option(False, help="Also train on the base model's own class images (keeps the class prompt's meaning)."),
    num_class_images: int = typer.Option(100, help="Class images to generate (seeded, cached in the run folder)."),
    prior_weight: float = typer.Option(1.0, help="Weight of the class images' loss."),
    lora: bool = typer.Option(False, "--lora", help="Train a LoRA (writes lora.safetensors) instead of every weight (writes model/)."),
    rank: int = typer.Option(4, help="LoRA rank (with --lora)."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha (with --lora; default the rank)."),
    targets: str = typer.Option("attn", help="LoRA targets (with --lora): attn or all."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps (default 400)."),
    batch_size: Optional[int] = typer.Option(None, help="Instance images per step (default 4; as many class images join)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 1e-3 with --lora, else 5e-5)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (with a checkpoint) after this long; rerun to resume."),
    seed: int = typer.Option(0, help="Seed for init, data order and noise."),
) -> None:
    """DreamBooth: teach a model one subject from a few images, under a new token."""
    from ..families.personalise import DreamBoothSettings, finetune_dreambooth

    settings = DreamBoothSettings(token=token, class_prompt=class_prompt,
                                  prior_preservation=prior_preservation,
                                  num_class_images=num_class_images, prior_weight=prior_weight)
    adapter = _lora_settings(rank, alpha, targets) if lora else None
    overrides = loop_overrides(precision="fp32", seed=seed, max_steps=steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               max_minutes=max_minutes)
    console.print(f"instance prompt: {settings.instance_prompt!r}")
    _report(finetune_dreambooth(model, images, out, settings, adapter, overrides))


@lora_app.command("fuse")
def lora_fuse_command(
    model: str = typer.Option(..., help="Base diffusion model: name or folder."),
    lora: list[str] = typer.Option(..., help="LoRA file as FILE[:WEIGHT]; repeat to fuse several."),
    out: Path = typer.Option(..., help="Model folder to write (must be new)."),
) -> None:
    """Write a model folder with the LoRAs merged into its weights."""
    from ..diffusion.lora import parse_lora_spec
    from ..families.personalise import fuse_lora_model

    specs = [parse_lora_spec(text) for text in lora]
    folder = fuse_lora_model(model, [(s.path, s.weight) for s in specs], out)
    console.print(f"[green]fused[/] {len(specs)} LoRA(s) into {folder}; try it with "
                  f"`imagesynth generate PROMPT --model {folder}`")


@lora_app.command("info")
def lora_info_command(file: Path = typer.Argument(..., help="A LoRA .safetensors file.")) -> None:
    """Show a LoRA file's layout, rank, alpha, modules and recorded base model."""
    from ..diffusion.lora import read_lora

    lora = read_lora(file)
    console.print_json(json.dumps({
        "file": str(file), "sha256": lora.sha256, "format": lora.source_format,
        "modules": len(lora.modules), "ranks": sorted(set(lora.ranks.values())),
        "alphas": sorted(set(lora.alphas.values())), "info": lora.info}))
