"""`imagesynth sweep`: paired error, task score and speed of each sampler against its step count."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import ConfigError
from . import app

console = Console(soft_wrap=True)


def parse_steps(text: str) -> tuple[int, ...]:
    """"4,6,8" -> (4, 6, 8); anything but comma-separated integers is a ConfigError on `steps`."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not all(item.isdigit() for item in items):
        raise ConfigError(f"{text!r} is not a comma list of step counts", field="steps",
                          fix="e.g. --steps 4,6,8,12,20,35,50")
    return tuple(int(item) for item in items)


def read_prompts(path: Path | None) -> tuple[str, ...]:
    """One prompt per non-empty line of `path` (none: the model's default set)."""
    if path is None:
        return ()
    if not path.is_file():
        raise ConfigError(f"{path} is not a file", field="prompts", fix="one prompt per line")
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


@app.command()
def sweep(
    model: str = typer.Option("shapes", help="Text-to-image model: name or folder."),
    samplers: str = typer.Option("euler,heun,dpmpp_2m,euler_a", help="Comma list (euler_a = euler_ancestral)."),
    steps: str = typer.Option("4,6,8,12,20,35,50", help="Sampler steps, increasing (Heun: 2 NFE per step but the last)."),
    prompts: Optional[Path] = typer.Option(None, help="File of prompts, one per line (default: the model's held-out set)."),
    prompt_count: int = typer.Option(16, help="How many default prompts (without --prompts)."),
    seeds: int = typer.Option(1, help="Seeds per prompt; image i uses seed i."),
    guidance: Optional[float] = typer.Option(None, help="CFG scale (default: the model's)."),
    reference: str = typer.Option("dpmpp_2m:200", help="Converged reference, SAMPLER:STEPS."),
    converged_nfe: int = typer.Option(500, help="Each sampler's own converged run at about this NFE (0: skip)."),
    converged_samplers: Optional[str] = typer.Option(None, help="Only these samplers get the converged run (default: all)."),
    clip: str = typer.Option("auto", help="CLIP for the feature error and emoji rank (auto: the bundled one; '' none)."),
    task: str = typer.Option("auto", help="Task score: auto, shapes (checker), emoji (CLIP top-5), none."),
    emoji_data: Path = typer.Option(Path("data/emoji"), help="Emoji folder: default prompts and ranked names."),
    out: Path = typer.Option(Path("sweep"), help="Writes OUT.json, OUT.md and OUT.png."),
) -> None:
    """Measure every sampler at every step count against a converged sample of the same seed."""
    from ..apps.sweep import run_sweep, SweepConfig
    from ..config import from_dict
    from ..io.files import atomic_write_text

    config = from_dict(SweepConfig, {
        "model": model, "samplers": tuple(s.strip() for s in samplers.split(",") if s.strip()),
        "steps": parse_steps(steps), "prompts": read_prompts(prompts), "prompt_count": prompt_count,
        "seeds": seeds, "guidance": guidance, "reference": reference, "converged_nfe": converged_nfe,
        "converged_samplers": None if converged_samplers is None else tuple(
            s.strip() for s in converged_samplers.split(",") if s.strip()),
        "clip": clip, "task": task, "emoji_data": str(emoji_data)})
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        handle = bar.add_task("loading", total=None)

        def on_progress(label: str, done: int, total: int) -> None:
            bar.update(handle, description=label, completed=done, total=total)

        result = run_sweep(config, progress=on_progress)
    atomic_write_text(out.with_suffix(".json"), result.to_json())
    table = result.to_markdown()
    atomic_write_text(out.with_suffix(".md"), table)
    result.figure(out.with_suffix(".png"))
    console.print(table)
    console.print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')} and "
                  f"{out.with_suffix('.png')}")
