"""`imagesynth generate` (text to image, img2img, inpainting) and `imagesynth reproduce`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import UsageError
from . import app

console = Console(soft_wrap=True)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "image"


def _output_paths(out: Path, prompt: str, seeds: list[int]) -> list[Path]:
    """FILE.png for one image (FILE-<seed>.png for several); DIR/<prompt>-<seed>.png otherwise."""
    if out.suffix.lower() == ".png":
        if len(seeds) == 1:
            return [out]
        return [out.with_name(f"{out.stem}-{seed}.png") for seed in seeds]
    if out.suffix:
        raise UsageError(f"{out.name} is not a .png file name", field="out",
                         fix="pass a folder or a FILE.png")
    return [out / f"{_slug(prompt)}-{seed}.png" for seed in seeds]


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What the image should show."),
    model: str = typer.Option("emoji", help="Diffusion model: bundled/registered name or folder."),
    negative: str = typer.Option("", help="Negative prompt (what to steer away from)."),
    seed: int = typer.Option(0, help="Seed of the first image; image i uses seed + i."),
    n: int = typer.Option(1, help="Number of images."),
    steps: Optional[int] = typer.Option(None, help="Sampler steps (model default if omitted)."),
    sampler: Optional[str] = typer.Option(None, help="euler, heun, euler_ancestral, dpmpp_2m, ddpm (model default if omitted)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale >= 0 (model default if omitted)."),
    size: Optional[int] = typer.Option(None, help="Image side in pixels: the training size for imagesynth models, any multiple of 8 for Stable Diffusion."),
    width: Optional[int] = typer.Option(None, help="Image width, with --height (Stable Diffusion: multiples of 8)."),
    height: Optional[int] = typer.Option(None, help="Image height, with --width."),
    guidance_rescale: float = typer.Option(0.0, help="CFG rescale in [0, 1] (Lin et al. 2023; ~0.7 against over-exposure)."),
    clip_guidance: float = typer.Option(0.0, help="CLIP guidance scale >= 0 (0 = off); needs --clip-model."),
    clip_model: Optional[str] = typer.Option(None, help="CLIP for --clip-guidance: name, folder, hf:FOLDER or openclip:ARCH:WEIGHTS."),
    clip_cutouts: int = typer.Option(8, help="CLIP guidance: random cutouts scored per step (1-64)."),
    init_image: Optional[Path] = typer.Option(None, help="Start from this image (img2img)."),
    strength: float = typer.Option(0.6, help="img2img: how much to change the init image, in (0, 1]."),
    mask: Optional[Path] = typer.Option(None, help="Inpainting mask (white = repaint), same size as the image."),
    mask_blur: float = typer.Option(0.0, help="Inpainting: blur radius of the mask edge, in pixels."),
    outpaint: Optional[str] = typer.Option(None, help='Outpainting: "LEFT,TOP,RIGHT,BOTTOM" borders to paint around --init-image.'),
    expand: bool = typer.Option(False, help="Rewrite the prompt into the model's training words first (prompt upsampling; recorded in the recipe)."),
    lora: list[str] = typer.Option([], help="LoRA file as FILE[:WEIGHT] (weight 1 if omitted); repeat to stack several."),
    control_image: list[Path] = typer.Option([], help="ControlNet condition map (layout/edges/scribble PNG); repeat for several ControlNets."),
    control_model: list[str] = typer.Option([], help="ControlNet model folder; one for all maps or one per --control-image."),
    control_scale: list[float] = typer.Option([], help="ControlNet scale >= 0 (default 1); one for all or one per map."),
    control_start: list[float] = typer.Option([], help="Fraction of the steps where control starts (default 0)."),
    control_end: list[float] = typer.Option([], help="Fraction of the steps where control ends (default 1)."),
    out: Path = typer.Option(Path("outputs"), help="Output folder, or FILE.png."),
    grid: bool = typer.Option(False, help="Also write all images as one grid PNG."),
) -> None:
    """Generate images from a prompt; every PNG carries its full recipe."""
    from ..config import from_dict
    from ..generation import GenerateConfig, generate as run_generate, parse_borders
    from ..io.pngmeta import save_png

    config = from_dict(GenerateConfig, {
        "prompt": prompt, "model": model, "negative": negative, "seed": seed, "n": n,
        "steps": steps, "sampler": sampler, "guidance": guidance, "size": size,
        "width": width, "height": height,
        "guidance_rescale": guidance_rescale, "clip_guidance": clip_guidance,
        "clip_model": clip_model, "clip_cutouts": clip_cutouts,
        "init_image": str(init_image) if init_image else None, "strength": strength,
        "mask": str(mask) if mask else None, "mask_blur": mask_blur,
        "outpaint": parse_borders(outpaint), "expand": expand, "lora": tuple(lora or ()),
        "control_image": tuple(str(p) for p in control_image or ()),
        "control_model": tuple(control_model or ()), "control_scale": tuple(control_scale or ()),
        "control_start": tuple(control_start or ()), "control_end": tuple(control_end or ())})
    result = run_generate(config)
    if expand:
        console.print(f"expanded: {result.recipes[0]['prompt']!r}")
    paths = _output_paths(out, prompt, [r["seed"] for r in result.recipes])
    for image, recipe, path in zip(result.images, result.recipes, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(image, path, recipe)
        console.print(f"wrote {path}")
    if grid:
        from .sample import write_grid

        write_grid(result.images, paths[0])


@app.command()
def reproduce(
    image: Path = typer.Argument(..., help="A PNG written by `imagesynth generate` or `dream`."),
    init_image: Optional[Path] = typer.Option(None, help="The init image (or an edit's source image), when the recipe used one."),
    mask: Optional[Path] = typer.Option(None, help="The mask, when the recipe used one."),
    control_image: Optional[list[Path]] = typer.Option(None, help="The ControlNet maps, when the recipe used them (repeat, in order)."),
    out: Optional[Path] = typer.Option(None, help="Also save the regenerated image here."),
) -> None:
    """Regenerate an image (generate or dream) from its PNG recipe; report whether pixels match."""
    from ..generation import reproduce_image
    from ..io.pngmeta import save_png

    report = reproduce_image(image, init_image=init_image, mask=mask, on_warning=lambda text:
                             console.print(f"[yellow]warning:[/] {text}"),
                             control_images=list(control_image or ()))
    if out is not None:
        save_png(report.image, out, report.recipe)
    if report.identical:
        console.print(f"[green]identical[/]: {image} reproduced pixel for pixel")
        return
    console.print(f"[red]different[/]: {report.pixels_differ} pixels differ, "
                  f"max difference {report.max_difference}/255")
    raise typer.Exit(1)
