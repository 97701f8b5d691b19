"""`imagesynth evaluate`: metrics of a folder of generated images against a reference folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ..config import from_dict
from ..io.files import atomic_write_text
from ..metrics.evaluate import METRICS, EvaluateConfig, evaluate_folders
from . import app


@app.command()
def evaluate(
    generated_dir: Path = typer.Argument(..., help="Folder of generated images."),
    ref: Path = typer.Option(..., "--ref", help="Folder of reference (real) images."),
    metrics: str = typer.Option("fd,kid,pr,dc", help=f"Comma list from {','.join(METRICS)}."),
    extractor: str = typer.Option("inception", help="Feature extractor: inception, or clip:MODEL (a CLIP image tower; reported as FD_clip-MODEL)."),
    inception: Optional[Path] = typer.Option(
        None, help="Inception weights (.pth or TorchScript .pt); default: "
                   "$IMAGESYNTH_HOME/weights/."),
    kid_subset_size: int = typer.Option(1000, help="KID subset size (capped at the set size)."),
    kid_subsets: int = typer.Option(100, help="Number of KID subsets."),
    seed: int = typer.Option(2020, help="Seed for KID subsets."),
    batch_size: int = typer.Option(32, help="Images per extractor batch."),
    cache: bool = typer.Option(True, help="Reuse cached features keyed by file hashes."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON here."),
) -> None:
    """Compute FD/FID, KID, precision/recall, density/coverage and IS between two folders."""
    config = from_dict(EvaluateConfig, {
        "generated_dir": str(generated_dir), "reference_dir": str(ref),
        "metrics": tuple(m.strip() for m in metrics.split(",") if m.strip()),
        "extractor": extractor, "inception_path": str(inception) if inception else None,
        "kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size, "seed": seed,
        "batch_size": batch_size, "use_cache": cache})
    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as progress:
        tasks: dict[str, int] = {}

        def on_progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(f"features: {label}", total=total)
            progress.update(tasks[label], completed=done)

        report = evaluate_folders(config, on_progress=on_progress)
    table = Table(title=f"{report['num_generated']} generated vs {report['num_reference']} "
                        f"reference ({report['extractor']}, d={report['feature_dim']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in report["metrics"].items():
        table.add_row(name, f"{value:.6g}")
    console.print(table)
    text = json.dumps(report, indent=2, sort_keys=True)
    print(text)
    if json_out is not None:
        atomic_write_text(json_out, text + "\n")
