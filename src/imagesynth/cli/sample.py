"""`imagesynth sample`: draw images from a model of any generator family."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from . import app
from .generate import _output_paths

console = Console(soft_wrap=True)


@app.command()
def sample(
    model: str = typer.Option(..., help="Any generator: GAN, flow, autoregressive, vector VAE or diffusion model (name or folder)."),
    n: int = typer.Option(4, help="Number of images; image i uses seed + i."),
    seed: int = typer.Option(0, help="Seed of the first image."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "--label", help="Caption or label for conditional models."),
    truncation: float = typer.Option(1.0, help="GAN: truncation psi in (0, 1] toward the condition's mean w."),
    temperature: float = typer.Option(1.0, help="Flow, VAE, autoregressive: sampling temperature > 0."),
    prior: str = typer.Option("mixture", help="VAE: mixture (fitted to the encodings) or normal (N(0, I))."),
    top_k: Optional[int] = typer.Option(None, help="Autoregressive: sample among the k likeliest tokens."),
    top_p: Optional[float] = typer.Option(None, help="Autoregressive: nucleus sampling mass in (0, 1]."),
    guidance: Optional[float] = typer.Option(None, help="Autoregressive / diffusion: classifier-free guidance scale."),
    steps: Optional[int] = typer.Option(None, help="Diffusion: sampler steps."),
    sampler: Optional[str] = typer.Option(None, help="Diffusion: sampler name."),
    out: Path = typer.Option(Path("outputs"), help="Output folder, or FILE.png."),
    grid: bool = typer.Option(False, help="Also write all images as one grid PNG."),
) -> None:
    """Sample images from any family; every PNG carries its recipe (`imagesynth reproduce`)."""
    from ..config import from_dict
    from ..families.sampling import SampleConfig, sample_images
    from ..io.pngmeta import save_png

    config = from_dict(SampleConfig, {
        "model": model, "n": n, "seed": seed, "prompt": prompt, "truncation": truncation,
        "temperature": temperature, "prior": prior, "top_k": top_k, "top_p": top_p,
        "guidance": guidance, "steps": steps, "sampler": sampler})
    images, recipes = sample_images(config)
    paths = _output_paths(out, prompt or Path(model).name, [r["seed"] for r in recipes])
    for image, recipe, path in zip(images, recipes, paths):
        save_png(image, path, recipe)
        console.print(f"wrote {path}")
    if grid:
        write_grid(images, paths[0])


def write_grid(images, first_path: Path) -> Path:
    """All images as one grid PNG beside the first image (FIRST-grid.png)."""
    import torch

    from ..train.datasets import save_grid_png
    from ..pipeline import _to_tensor

    grid_path = first_path.with_name(f"{first_path.stem}-grid.png")
    save_grid_png(torch.cat([_to_tensor(i) for i in images]), grid_path)
    console.print(f"wrote {grid_path}")
    return grid_path


@app.command()
def interpolate(
    model: str = typer.Option(..., help="A GAN, flow or vector VAE model (name or folder)."),
    start: str = typer.Argument(..., help="Start: a seed, an image file, or (conditional GAN) a prompt."),
    end: Optional[str] = typer.Argument(None, help="End: a seed, an image file or a prompt (or use --add/--subtract)."),
    frames: int = typer.Option(16, help="Frames from start to end."),
    slerp: bool = typer.Option(False, help="Spherical instead of linear interpolation."),
    seed: int = typer.Option(0, help="The z of prompt end points (conditional GAN)."),
    prompt: Optional[str] = typer.Option(None, help="Conditional GAN: the caption for seed and image end points."),
    truncation: float = typer.Option(1.0, help="GAN: truncation psi in (0, 1]."),
    add: Optional[str] = typer.Option(None, help='Latent arithmetic: move toward captions with this phrase, e.g. "on the left".'),
    subtract: Optional[str] = typer.Option(None, help='... and away from captions with this one, e.g. "on the right".'),
    data: Optional[Path] = typer.Option(None, help="Captioned folder the arithmetic directions come from."),
    strength: float = typer.Option(1.0, help="How far along the direction the walk goes."),
    scale: int = typer.Option(4, help="Upscale frames by this factor (nearest) in the GIF and sheet."),
    out: Path = typer.Option(Path("interpolation.gif"), help="Output GIF; a contact sheet PNG is written beside it."),
) -> None:
    """Walk through a model's latent space (seeds, prompts, encoded images, or caption directions)."""
    from PIL import Image

    from ..config import from_dict
    from ..errors import ConfigError
    from ..families.interpolation import InterpolateConfig, interpolate as run_interpolate
    from ..guided.video import save_gif
    from ..io.pngmeta import save_png

    if not 1 <= scale <= 16:
        raise ConfigError(f"must be between 1 and 16, got {scale}", field="scale")
    config = from_dict(InterpolateConfig, {
        "model": model, "start": start, "end": end, "frames": frames, "slerp": slerp,
        "seed": seed, "prompt": prompt, "truncation": truncation, "add": add,
        "subtract": subtract, "data": str(data) if data else None, "strength": strength})
    images, recipe = run_interpolate(config)
    big = [image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
           for image in images]
    save_gif(big, out)
    sheet = Image.new("RGB", (big[0].width * len(big), big[0].height), "white")
    for i, frame in enumerate(big):
        sheet.paste(frame, (i * frame.width, 0))
    sheet_path = save_png(sheet, out.with_suffix(".png"), recipe)
    console.print(f"wrote {out} and {sheet_path}")
