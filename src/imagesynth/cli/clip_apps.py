"""`imagesynth classify | index | search | score`: the CLIP applications."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ..apps import (SearchIndex, classify_images, resolve_scorer, score_images,
                    write_contact_sheet)
from ..errors import ConfigError
from ..paths import home
from . import app

MODEL_HELP = ("CLIP model: registry name or folder of an imagesynth CLIP, hf:FOLDER (Hugging "
              "Face CLIPModel) or openclip:ARCH:WEIGHTS. Default: emoji-clip.")
INDEX_HELP = "Index file. Default: $IMAGESYNTH_HOME/search-index.sqlite."


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _index_path(index: Optional[Path]) -> Path:
    return index if index is not None else home() / "search-index.sqlite"


@app.command()
def classify(
    images: list[Path] = typer.Argument(..., help="Image files (PNG, JPEG, WEBP)."),
    labels: str = typer.Option(..., "--labels", help='Comma-separated labels, e.g. "cat,dog".'),
    template: list[str] = typer.Option(
        ["{}"], "--template", help='Prompt template with {} for the label; repeat to '
                                   'ensemble, e.g. "an emoji of {}".'),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    top: int = typer.Option(5, "--top", help="Labels to show per image."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Zero-shot classification: rank LABELS for each image with probabilities."""
    scorer = resolve_scorer(model, _device())
    results = classify_images(scorer, [str(p) for p in images], labels, template, top_k=top)
    if json_out:
        print(json.dumps({"model": scorer.name, "templates": template,
                          "results": [r.to_dict() for r in results]}, indent=2))
        return
    console = Console()
    for result in results:
        table = Table(title=escape(result.image), title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("label")
        table.add_column("probability", justify="right")
        table.add_column("cosine", justify="right")
        for rank, score in enumerate(result.ranked, start=1):
            table.add_row(str(rank), escape(score.label), f"{score.probability:.3f}",
                          f"{score.similarity:.3f}")
        console.print(table)


@app.command()
def index(
    folder: Path = typer.Argument(..., help="Folder of images to index (recursively)."),
    index_path: Optional[Path] = typer.Option(None, "--index", help=INDEX_HELP),
    model: Optional[str] = typer.Option(
        None, "--model", help=MODEL_HELP + " An existing index keeps its own model."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per embedding batch."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Build or update a search index: add new images, skip duplicates, prune removed files."""
    path = _index_path(index_path)
    with SearchIndex(path, create=True) as search_index:
        spec = model or search_index.model_spec
        scorer = resolve_scorer(spec, _device())
        spec = spec or scorer.name
        console = Console(stderr=json_out, soft_wrap=True)
        with Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("index", total=None)

            def on_progress(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            report = search_index.update(folder, scorer, spec, batch_size=batch_size,
                                         progress=on_progress)
        stats = search_index.stats()
    if json_out:
        print(json.dumps({**report.to_dict(), **stats}, indent=2))
        return
    warnings = Console(stderr=True, soft_wrap=True)
    for _, reason in report.unreadable:  # the reason names the file
        warnings.print(f"[yellow]skipped:[/] {escape(reason)}", highlight=False)
    console.print(f"added {report.added}, updated {report.updated}, unchanged "
                  f"{report.unchanged}, skipped duplicates {report.duplicates}, pruned "
                  f"{report.pruned}, unreadable skipped {len(report.unreadable)} — "
                  f"{stats['images']} images in {escape(str(path))}", highlight=False)


@app.command()
def search(
    query: Optional[str] = typer.Argument(None, help="Text query."),
    image: Optional[Path] = typer.Option(None, "--image", help="Query by this image instead."),
    index_path: Optional[Path] = typer.Option(None, "--index", help=INDEX_HELP),
    model: Optional[str] = typer.Option(
        None, "--model", help="Model spec; default: the one the index was built with."),
    top: int = typer.Option(10, "--top", help="Number of results."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a contact sheet."),
) -> None:
    """Search an index by text or by --image; print ranked results."""
    if (query is None) == (image is None):
        raise ConfigError("give either a text query or --image, not both or neither",
                          field="query", fix='imagesynth search "a red circle"')
    with SearchIndex(_index_path(index_path)) as search_index:
        scorer = resolve_scorer(model or search_index.model_spec, _device())
        if image is not None:
            results = search_index.search_image(scorer, image, top_k=top)
        else:
            results = search_index.search_text(scorer, query, top_k=top)
    title = f"search: {query}" if image is None else f"search by image: {image.name}"
    if html is not None:
        write_contact_sheet(results, html, title)
    if json_out:
        print(json.dumps({"query": query, "image": str(image) if image else None,
                          "model": scorer.name, "results": [r.to_dict() for r in results]},
                         indent=2))
        return
    table = Table(title=escape(title), title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("path", overflow="fold")
    for result in results:
        table.add_row(str(result.rank), f"{result.score:.4f}", escape(result.path))
    console = Console()
    console.print(table)
    if html is not None:
        Console(soft_wrap=True).print(f"contact sheet: {escape(str(html))}", highlight=False)


@app.command()
def score(
    images: list[Path] = typer.Argument(..., help="Image files (PNG, JPEG, WEBP)."),
    prompt: str = typer.Option(..., "--prompt", help="The text the images should match."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """CLIP score of images against a prompt (Hessel CLIPScore and torchmetrics 100·cos)."""
    scorer = resolve_scorer(model, _device())
    report = score_images(scorer, [str(p) for p in images], prompt)
    if json_out:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=escape(f"CLIP score ({scorer.name}): {prompt}"), title_justify="left")
    table.add_column("image", overflow="fold")
    table.add_column("CLIPScore (w=2.5)", justify="right")
    table.add_column("100·cos", justify="right")
    for row in report["images"]:
        table.add_row(escape(row["image"]), f"{row['clip_score_hessel']:.4f}",
                      f"{row['clip_score_torchmetrics']:.2f}")
    table.add_row("[bold]mean[/]", f"{report['clip_score_hessel']:.4f}",
                  f"{report['clip_score_torchmetrics']:.2f}")
    Console().print(table)
