"""`imagesynth generate` (text to image, img2img, inpainting) and `imagesynth reproduce`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import InputImageError, UsageError
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
    size: Optional[int] = typer.Option(None, help="Image side in pixels; only the model's training size is allowed."),
    init_image: Optional[Path] = typer.Option(None, help="Start from this image (img2img)."),
    strength: float = typer.Option(0.6, help="img2img: how much to change the init image, in (0, 1]."),
    mask: Optional[Path] = typer.Option(None, help="Inpainting mask (white = repaint), same size as the image."),
    out: Path = typer.Option(Path("outputs"), help="Output folder, or FILE.png."),
    grid: bool = typer.Option(False, help="Also write all images as one grid PNG."),
) -> None:
    """Generate images from a prompt; every PNG carries its full recipe."""
    from ..api import load
    from ..io.pngmeta import save_png

    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}", field="n")
    pipe = load(model)
    result = pipe(prompt, seed=seed, negative_prompt=negative, num_images=n, num_steps=steps,
                  sampler=sampler, guidance_scale=guidance, size=size, init_image=init_image,
                  strength=strength, mask=mask)
    paths = _output_paths(out, prompt, [r["seed"] for r in result.recipes])
    for image, recipe, path in zip(result.images, result.recipes, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(image, path, recipe)
        console.print(f"wrote {path}")
    if grid:
        from ..diffusion.training import save_grid_png
        from ..pipeline import _to_tensor

        import torch

        grid_path = paths[0].with_name(f"{paths[0].stem}-grid.png")
        save_grid_png(torch.cat([_to_tensor(i) for i in result.images]), grid_path)
        console.print(f"wrote {grid_path}")


@app.command()
def reproduce(
    image: Path = typer.Argument(..., help="A PNG written by `imagesynth generate` or `dream`."),
    init_image: Optional[Path] = typer.Option(None, help="The init image, when the recipe used one."),
    mask: Optional[Path] = typer.Option(None, help="The mask, when the recipe used one."),
    out: Optional[Path] = typer.Option(None, help="Also save the regenerated image here."),
) -> None:
    """Regenerate an image (generate or dream) from its PNG recipe; report whether pixels match."""
    from ..api import load
    from ..io.pngmeta import read_recipe

    recipe = read_recipe(image)
    if recipe.get("kind") == "dream":  # written by `imagesynth dream`: replay the optimisation
        from ..guided import reproduce_from_recipe

        _report_match(image, reproduce_from_recipe(recipe), out, recipe)
        return
    if "seed" not in recipe or "model" not in recipe:
        raise InputImageError("the PNG has no imagesynth generation recipe", field="image",
                              fix="pass a PNG written by `imagesynth generate`")
    for name, given, key in (("--init-image", init_image, "init_image_hash"),
                             ("--mask", mask, "mask_hash")):
        if recipe.get(key) and given is None:
            raise UsageError(f"this image was made with an input image; pass {name}", field=name)
    pipe = load(recipe["model"])
    if pipe.model_hash != recipe.get("model_hash"):
        console.print("[yellow]warning:[/] the model's weights differ from the recipe's model hash")
    result = pipe(recipe["prompt"], seed=recipe["seed"], negative_prompt=recipe.get("negative_prompt", ""),
                  num_steps=recipe["steps"], sampler=recipe["sampler"],
                  guidance_scale=recipe["guidance_scale"], size=recipe["size"][0],
                  init_image=init_image, strength=recipe.get("strength") or 0.6, mask=mask,
                  mask_blur=recipe.get("mask_blur", 0.0))
    for key in ("init_image_hash", "mask_hash"):
        if recipe.get(key) and result.recipes[0].get(key) != recipe[key]:
            raise InputImageError(f"the given file does not match the recipe's {key}",
                                  field=key.removesuffix("_hash"))
    _report_match(image, result.images[0], out, result.recipes[0])


def _report_match(image: Path, regenerated, out: Optional[Path], recipe: dict) -> None:
    """Print whether `regenerated` equals the PNG's pixels; exit 1 when it does not."""
    from ..io.images import open_image
    from ..io.pngmeta import save_png
    from ..pipeline import image_bytes_equal

    if out is not None:
        save_png(regenerated, out, recipe)
    if image_bytes_equal(open_image(image, mode="RGB"), regenerated):
        console.print(f"[green]identical[/]: {image} reproduced pixel for pixel")
        return
    import numpy as np

    original = np.asarray(open_image(image, mode="RGB"), dtype=np.int16)
    difference = np.abs(original - np.asarray(regenerated, dtype=np.int16))
    console.print(f"[red]different[/]: {int((difference > 0).any(-1).sum())} pixels differ, "
                  f"max difference {int(difference.max())}/255")
    raise typer.Exit(1)
