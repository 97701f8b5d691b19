"""`imagesynth edit-clip`: edit an image in a GAN's latent with CLIP (StyleCLIP, StyleGAN-NADA)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from . import app

console = Console(soft_wrap=True)


@app.command("edit-clip")
def edit_clip_command(
    image: Path = typer.Argument(..., help="Image to edit, at the GAN's size (e.g. 32x32)."),
    prompt: Optional[str] = typer.Argument(None, help='Target text of the latent edit, e.g. "a blue circle" (omit with --nada).'),
    gan: str = typer.Option(..., help="GAN name or folder (e.g. shapes-gan)."),
    source: Optional[str] = typer.Option(None, help="Text describing the image: conditions the inversion's start (a conditional GAN); without it the start is a seeded random condition."),
    nada: Optional[tuple[str, str]] = typer.Option(None, help='SOURCE TARGET: fine-tune the generator with the directional CLIP loss (StyleGAN-NADA) instead of moving one latent.'),
    nada_out: Optional[Path] = typer.Option(None, help="With --nada: write the adapted GAN as a model folder here."),
    latent: str = typer.Option("w", help="w (one latent for all layers) or w+ (one per layer)."),
    seed: int = typer.Option(0, help="Seed for the inversion's candidates, cutouts and NADA samples."),
    invert_steps: int = typer.Option(300, help="Inversion: Adam steps on the pixel MSE."),
    invert_lr: float = typer.Option(0.05, help="Inversion: learning rate."),
    invert_candidates: int = typer.Option(16, help="Inversion: seeded samples; the nearest to the image starts."),
    invert_clip_weight: float = typer.Option(0.0, help="Inversion: weight of the CLIP image-embedding term."),
    steps: int = typer.Option(100, help="Edit: Adam steps on the CLIP loss."),
    lr: float = typer.Option(0.05, "--lr", help="Edit: learning rate."),
    l2_weight: float = typer.Option(3e-4, help="Edit: lambda of ||w - w_inverted||^2 (keeps the edit near the image)."),
    loss: str = typer.Option("text", help="Edit: text (CLIP distance to PROMPT) or directional (NADA's loss from --source to PROMPT)."),
    layers: str = typer.Option("all", help='Edit: w+ rows that move: all, torgb (colour), conv (layout and shape) or numbers "1,4".'),
    cutouts: int = typer.Option(8, help="Augmented cutouts scored per step."),
    cutout_noise: float = typer.Option(0.05, help="Noise added to cutouts."),
    nada_steps: int = typer.Option(100, help="NADA: fine-tuning steps."),
    nada_lr: float = typer.Option(0.002, help="NADA: learning rate of the synthesis network."),
    nada_batch: int = typer.Option(4, help="NADA: samples per step."),
    scorer: str = typer.Option("shapes-clip", help="CLIP model: name, folder, hf:FOLDER, openclip:ARCH:WEIGHTS."),
    inverted: Optional[Path] = typer.Option(None, help="Also write the inversion (before the edit) here."),
    out: Path = typer.Option(Path("edit-clip.png"), help="Output PNG (carries the full recipe)."),
) -> None:
    """Invert IMAGE into the GAN's w, then move w toward PROMPT with CLIP (or shift the GAN: --nada)."""
    from ..config import from_dict
    from ..guided.edit_clip import EditClipConfig, edit_clip

    config = from_dict(EditClipConfig, {
        "image": str(image), "prompt": prompt, "gan": gan, "source": source,
        "nada": tuple(nada) if nada and any(nada) else (), "latent": latent, "seed": seed,
        "invert_steps": invert_steps, "invert_lr": invert_lr,
        "invert_candidates": invert_candidates, "invert_clip_weight": invert_clip_weight,
        "steps": steps, "learning_rate": lr, "l2_weight": l2_weight, "loss": loss,
        "layers": layers, "cutouts": cutouts,
        "cutout_noise": cutout_noise, "nada_steps": nada_steps, "nada_lr": nada_lr,
        "nada_batch": nada_batch, "scorer": scorer,
    })
    result = edit_clip(config, nada_out=nada_out)
    result.save(out)
    if inverted is not None:
        result.inverted.save(inverted)
    m = result.measured
    line = f"[green]wrote[/] {out}  inversion MSE {m['inversion_mse_start']:.4f} -> {m['inversion_mse']:.4f}"
    if "score_after" in m:
        line += f"  CLIP {m['score_before']:.3f} -> {m['score_after']:.3f}  |w - w_inv| {m['w_distance']:.3f}"
    console.print(line)
    if result.generator_dir is not None:
        console.print(f"[green]wrote[/] the adapted GAN {result.generator_dir}")
