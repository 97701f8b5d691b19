"""`imagesynth data ...`: build the emoji, shapes and user-folder data sets."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.markup import escape
from rich.table import Table

from ..data.emoji import EmojiConfig, build_emoji_dataset, fetch_package
from ..data.folder import CaptionedImageFolder
from ..data.shapes_dataset import ShapesConfig, build_shapes_dataset
from ..io.files import atomic_write_text

from . import app

data_app = typer.Typer(help="Build captioned image data sets (emoji, shapes, your own folder).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()


@contextlib.contextmanager
def _progress_bar(description: str) -> Iterator:
    """A Rich progress bar; yields a (done, total) callback for the library functions."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def _summary_table(title: str, rows: dict) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


@data_app.command()
def shapes(
    out: Path = typer.Option(Path("data/shapes"), help="Folder to write the data set to."),
    size: int = typer.Option(32, help="Canvas side in pixels (at least 16)."),
    count: int = typer.Option(10_000, help="Number of scenes."),
    seed: int = typer.Option(0, help="Seed; scene i depends only on (seed, i)."),
    two_object_fraction: float = typer.Option(0.5, help="Fraction of two-object scenes."),
    position_fraction: float = typer.Option(
        0.5, help="Fraction of one-object scenes captioned with a position."),
    hold_out: bool = typer.Option(
        True, "--hold-out/--no-hold-out",
        help="Leave out purple triangle, orange circle, cyan square and yellow square."),
    val_fraction: float = typer.Option(0.05, help="Fraction of images in the val split."),
    with_conditions: bool = typer.Option(
        False, "--with-conditions",
        help="Also write each scene's layout and edge maps (ControlNet conditions)."),
) -> None:
    """Render the procedural ShapesWorld data set (coloured shapes with exact captions)."""
    config = ShapesConfig(size=size, count=count, seed=seed,
                          two_object_fraction=two_object_fraction,
                          position_fraction=position_fraction, hold_out=hold_out,
                          val_fraction=val_fraction, with_conditions=with_conditions)
    with _progress_bar("rendering scenes") as progress:
        summary = build_shapes_dataset(out, config, progress=progress)
    kinds = summary.details["kinds"]
    console.print(_summary_table("ShapesWorld", {
        "written to": summary.out, "images": f"{summary.count} ({size}×{size} px)",
        "split": f"{summary.train} train / {summary.val} val",
        "captions": ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())),
        "colour-shape pairs": summary.details["pairs"],
        "held out": "purple triangle, orange circle, cyan square, yellow square"
                    if hold_out else "none",
        "time": f"{summary.seconds:.1f} s"}))


@data_app.command("shapes-edits")
def shapes_edits(
    out: Path = typer.Option(Path("data/shapes-edits"), help="Folder to write the triples to."),
    count: int = typer.Option(20_000, help="Number of (before, instruction, after) triples."),
    seed: int = typer.Option(0, help="Seed; triple i depends only on (seed, i)."),
    size: int = typer.Option(32, help="Canvas side in pixels (at least 16)."),
) -> None:
    """Render ShapesWorld instruction-editing triples (recolour, reshape, move, add, remove)."""
    from ..data.shapes_edits import ShapesEditsConfig, build_shapes_edits

    config = ShapesEditsConfig(count=count, seed=seed, size=size)
    with _progress_bar("rendering triples") as progress:
        summary = build_shapes_edits(out, config, progress=progress)
    console.print(_summary_table("ShapesWorld edits", {
        "written to": summary.out, "triples": f"{summary.count} ({size}×{size} px)",
        "split": f"{summary.train} train / {summary.val} val / "
                 f"{summary.count - summary.train - summary.val} test (held-out pairs + hash)",
        "time": f"{summary.seconds:.1f} s"}))


@data_app.command()
def emoji(
    out: Path = typer.Option(Path("data/emoji"), help="Folder to write the data set to."),
    styles: str = typer.Option("twitter,google", help="Comma-separated: twitter, google."),
    size: int = typer.Option(64, help="Output side in pixels."),
    background: str = typer.Option("white", help="Background colour: a name or #RRGGBB."),
    skin_tones: bool = typer.Option(False, "--skin-tones/--no-skin-tones",
                                    help="Also include skin-tone variants."),
    val_fraction: float = typer.Option(0.05, help="Fraction of images in the val split."),
    refresh: bool = typer.Option(False, help="Run `npm pack` again even when cached."),
) -> None:
    """Build the captioned emoji set from the npm packages (fetched once with `npm pack`)."""
    config = EmojiConfig(styles=tuple(s.strip() for s in styles.split(",") if s.strip()),
                         size=size, background=background, skin_tones=skin_tones,
                         val_fraction=val_fraction)
    started = time.perf_counter()
    with console.status("fetching packages (npm pack, cached after the first run)"):
        for style in config.styles:
            fetch_package(style, refresh=refresh)
    with _progress_bar("compositing emoji") as progress:
        summary = build_emoji_dataset(out, config, progress=progress)
    details = summary.details
    console.print(_summary_table("Emoji", {
        "written to": summary.out,
        "images": ", ".join(f"{n} {style}" for style, n in details["per_style"].items())
                  + f" ({size}×{size} px)",
        "split": f"{summary.train} train / {summary.val} val",
        "packages": ", ".join(f"{style} {version}" for style, version
                              in details["versions"].items()),
        "skipped (no artwork)": details["skipped"],
        "time": f"{time.perf_counter() - started:.1f} s"}))
    console.print("Licences and attributions are in DATASET.md (Twemoji CC-BY 4.0, "
                  "Noto Apache-2.0).")


@data_app.command()
def folder(
    source: Path = typer.Argument(..., help="Folder of images with captions."),
    out: Path | None = typer.Option(None, help="Write the JSON report here."),
    captions_out: Path | None = typer.Option(
        None, help="Write a normalised captions.jsonl of the usable images here."),
    strict: bool = typer.Option(False, help="Fail on the first problems instead of skipping."),
    val_fraction: float = typer.Option(0.05, help="Fraction of images in the val split."),
) -> None:
    """Validate a folder of captioned images (captions.jsonl, metadata.csv or .txt sidecars)."""
    started = time.perf_counter()
    dataset = CaptionedImageFolder(source, val_fraction=val_fraction, strict=strict)
    with _progress_bar("checking images") as progress:
        report = dataset.validate(progress=progress)
    problem_counts = report.to_dict()["problem_counts"]
    console.print(_summary_table(f"Folder {source}", {
        "images found": report.images_found, "usable": report.usable,
        "split": f"{report.train} train / {report.val} val",
        "caption sources": ", ".join(f"{v} {k}" for k, v in report.caption_sources.items())
                           or "none",
        "problems": ", ".join(f"{v} {k}" for k, v in problem_counts.items()) or "none",
        "time": f"{time.perf_counter() - started:.1f} s"}))
    for problem in report.problems[:10]:
        console.print(f"  [yellow]{problem.kind}[/] {escape(problem.file)}: "
                      f"{escape(problem.message)}", highlight=False)
    if len(report.problems) > 10:
        console.print(f"  … and {len(report.problems) - 10} more (see --out for all)")
    if out is not None:
        atomic_write_text(out, json.dumps(report.to_dict(), indent=2))
        console.print(f"report written to {out}")
    if captions_out is not None:
        lines = dataset.write_captions(captions_out)
        console.print(f"{lines} captions written to {captions_out}")
