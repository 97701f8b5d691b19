"""`imagesynth compare`: one model per generator family, same data and budget, one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import ConfigError
from . import app

console = Console(soft_wrap=True)


def parse_models(items: list[str]) -> dict[str, str]:
    """["gan=runs/gan/model", ...] -> {"gan": "runs/gan/model"}."""
    models = {}
    for item in items:
        family, sep, spec = item.partition("=")
        if not sep or not spec:
            raise ConfigError(f"{item!r} is not FAMILY=MODEL", field="model",
                              fix="write --model gan=runs/gan/model")
        models[family.strip()] = spec.strip()
    return models


@app.command()
def compare(
    data: Path = typer.Option(..., help="Captioned folder; its val split is the held-out reference."),
    families: str = typer.Option("vae,gan,flow,ar,diffusion", help="Comma list of families to compare."),
    budget_minutes: float = typer.Option(10.0, help="Training wall-clock per family (when no model is given)."),
    model: list[str] = typer.Option([], help="Use this trained model instead of training: FAMILY=MODEL (repeatable)."),
    samples: int = typer.Option(512, help="Images generated per family."),
    seed: int = typer.Option(0, help="Seed of the first sample."),
    extractor: str = typer.Option("clip:shapes-clip", help="Feature space of FD and precision/recall: clip:MODEL or inception."),
    clip: Optional[str] = typer.Option("shapes-clip", help="CLIP for the CLIP score of conditional families ('' = none)."),
    size: int = typer.Option(32, help="Image side every model must generate."),
    runs: Path = typer.Option(Path("runs/compare"), help="Where trained models go."),
    out: Path = typer.Option(Path("compare"), help="Writes OUT.json, OUT.md and OUT.png."),
) -> None:
    """Train or load one model per family and print the seed's table with measured columns."""
    from ..apps.compare import CompareConfig, markdown_table, run_compare, save_figure
    from ..config import from_dict
    from ..io.files import atomic_write_text

    config = from_dict(CompareConfig, {
        "data": str(data), "families": tuple(f.strip() for f in families.split(",") if f.strip()),
        "models": parse_models(model), "budget_minutes": budget_minutes, "runs": str(runs),
        "samples": samples, "seed": seed, "extractor": extractor, "clip": clip or None,
        "size": size})
    report = run_compare(config, on_progress=lambda text: console.print(f"[bold]{text}[/]"))
    table = markdown_table(report)
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), table)
    save_figure(report, out.with_suffix(".png"))
    console.print(table)
    console.print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')} and "
                  f"{out.with_suffix('.png')}")
