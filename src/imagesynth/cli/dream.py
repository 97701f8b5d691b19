"""`imagesynth dream`: CLIP-guided synthesis (a drawer optimised by gradient ascent on a CLIP score)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import ConfigError
from . import app

console = Console(soft_wrap=True)


def parse_size(text: str) -> tuple[int, int]:
    """"64" -> (64, 64); "96x64" -> (96, 64) as (width, height)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise ConfigError(f"{text!r} is not a size", field="size", fix='write "64" or "96x64"')
    return (values[0], values[-1])


@app.command()
def dream(
    prompt: str = typer.Argument(..., help='What to draw; weights and negatives: "a red circle:1 | blurry:-0.5".'),
    drawer: str = typer.Option("pixels", help="pixels, fourier, pixelart, decoder, diffusion-latent or gan."),
    steps: int = typer.Option(300, help="Optimisation steps."),
    size: str = typer.Option("64", help='Image size: "64" or "WIDTHxHEIGHT".'),
    cutouts: int = typer.Option(32, help="Augmented cutouts scored per step."),
    cut_power: float = typer.Option(1.0, help="Cutout size exponent (>1: smaller cutouts)."),
    cutout_noise: float = typer.Option(0.05, help="Noise added to cutouts."),
    cutout_jitter: float = typer.Option(0.0, help="Random zoom/shift of each cutout, 0-0.5 (e.g. 0.1)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (drawer default if omitted)."),
    lr_schedule: str = typer.Option("constant", help="constant, or cosine (decay to zero by the last step)."),
    seed: int = typer.Option(0, help="Seed for the drawer's start and every cutout."),
    init_image: Optional[Path] = typer.Option(None, help="Start from this image (PNG/JPEG/WEBP)."),
    init_colour: Optional[str] = typer.Option(None, help='Start from a plain canvas of this colour ("white", "#ffffff").'),
    init_noise: float = typer.Option(0.0, help="Std of seeded noise added to the start (lets seeds differ from one init)."),
    init_candidates: int = typer.Option(1, help="Random starts to draw; the one the scorer rates best is optimised (CLIP reranking)."),
    image_prompt: list[str] = typer.Option([], help="Image whose embedding is a target, FILE[:WEIGHT]; repeatable."),
    style: Optional[str] = typer.Option(None, help="Style preset appended to the prompt (unreal, artstation, pixelart, sketch, ...)."),
    edit_to: Optional[str] = typer.Option(None, help="Edit --init-image toward this text (directional CLIP loss); PROMPT describes the original."),
    content_weight: float = typer.Option(0.5, help="Editing: weight of staying close to the original."),
    tv_weight: float = typer.Option(0.0, help="Total-variation (smoothness) weight."),
    range_weight: float = typer.Option(0.0, help="Range-loss weight (decoder drawer)."),
    saturation_weight: float = typer.Option(0.0, help="Saturation-loss weight."),
    cells: int = typer.Option(8, help="Pixelart: cells along the short side."),
    palette: str = typer.Option("", help='Pixelart: comma-separated hex colours, e.g. "#f00,#00f".'),
    decoder: Optional[str] = typer.Option(None, help="Decoder drawer: autoencoder name or folder."),
    diffusion_model: Optional[str] = typer.Option(None, help="Diffusion-latent drawer: text-to-image model name or folder."),
    diffusion_steps: int = typer.Option(6, help="Diffusion-latent: sampler steps per render."),
    diffusion_sampler: str = typer.Option("dpmpp_2m", help="Diffusion-latent: dpmpp_2m or euler (deterministic)."),
    diffusion_guidance: Optional[float] = typer.Option(None, help="Diffusion-latent: classifier-free guidance scale (model default if omitted)."),
    gan: Optional[str] = typer.Option(None, help="GAN drawer: GAN name or folder (e.g. shapes-gan)."),
    gan_latent: str = typer.Option("w", help="GAN drawer: w (one for all layers), w+ (one per layer) or z (z and the condition, Big Sleep's way)."),
    gan_truncation: float = typer.Option(1.0, help="GAN drawer: truncation psi of the start, in (0, 1]."),
    gan_start: str = typer.Option("prompt", help="GAN drawer: start conditioned on the prompt, or random (a seeded random condition)."),
    scorer: str = typer.Option("shapes-clip", help="Scorer A (optimised): model name, folder, hf:FOLDER, openclip:ARCH:WEIGHTS."),
    held_out_scorer: Optional[str] = typer.Option(None, help="Scorer B (only evaluates) for the adversarial check."),
    eval_every: int = typer.Option(25, help="Score the image every N steps."),
    frames: Optional[Path] = typer.Option(None, help="Write progress frames into this folder."),
    frame_every: int = typer.Option(10, help="Steps between frames."),
    gif: Optional[Path] = typer.Option(None, help="Write an animated GIF of the optimisation."),
    mp4: Optional[Path] = typer.Option(None, help="Write an MP4 video of the optimisation (needs the imageio-ffmpeg package, the video extra)."),
    out: Path = typer.Option(Path("dream.png"), help="Output PNG (carries the full recipe)."),
) -> None:
    """Draw PROMPT by gradient ascent on a CLIP score, with any drawer."""
    from ..config import from_dict
    from ..guided.loop import DreamConfig, dream as run_dream
    from ..guided.video import Mp4Writer, save_gif

    width, height = parse_size(size)
    config = from_dict(DreamConfig, {
        "prompt": prompt, "drawer": drawer, "steps": steps, "width": width, "height": height,
        "cutouts": cutouts, "cut_power": cut_power, "cutout_noise": cutout_noise,
        "cutout_jitter": cutout_jitter,
        "learning_rate": lr, "lr_schedule": lr_schedule, "seed": seed,
        "init_image": str(init_image) if init_image else None,
        "init_colour": init_colour, "init_noise": init_noise, "init_candidates": init_candidates,
        "image_prompts": tuple(image_prompt), "style": style, "edit_to": edit_to,
        "content_weight": content_weight, "tv_weight": tv_weight, "range_weight": range_weight,
        "saturation_weight": saturation_weight, "scorer": scorer,
        "held_out_scorer": held_out_scorer, "cells": cells,
        "palette": tuple(c.strip() for c in palette.split(",") if c.strip()),
        "decoder": decoder, "diffusion_model": diffusion_model, "diffusion_steps": diffusion_steps,
        "diffusion_sampler": diffusion_sampler, "diffusion_guidance": diffusion_guidance,
        "gan": gan, "gan_latent": gan_latent, "gan_truncation": gan_truncation,
        "gan_start": gan_start,
        "eval_every": eval_every, "frame_every": frame_every,
    })
    # Opened before the run so a missing package fails at once; frames stream to disk.
    video = Mp4Writer(mp4) if mp4 is not None else None
    with video or contextlib.nullcontext():
        result = run_dream(config, show_progress=True, keep_frames=gif is not None,
                           frames_dir=frames,
                           on_frame=(lambda step, frame: video.append(frame)) if video else None)
    result.save(out)
    if gif is not None:
        save_gif(result.frames, gif)
    first, last = result.history[0], result.history[-1]
    line = f"[green]wrote[/] {out}  score {first['score']:.3f} -> {last['score']:.3f}"
    if "held_out_score" in last:
        line += f"  held-out {first['held_out_score']:.3f} -> {last['held_out_score']:.3f}"
    console.print(line)
    if result.adversarial:
        console.print("[bold yellow]adversarial:[/] scorer A's score rose while the held-out "
                      "scorer's fell; the image fools A rather than depicting the prompt")
