"""`imagesynth models list|verify|add|remove`: the local model registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import IntegrityError
from ..registry import Registry
from . import app

models_app = typer.Typer(help="List, verify and register local models (SHA-256 pinned).",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(soft_wrap=True)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def describe_entry(entry) -> dict:
    """Kind, prediction type, resolution, text encoder and hash of a model, for listings."""
    details = dict(entry.details)
    if entry.family == "stable-diffusion":
        kind = details.get("arch", "?") + (" inpaint" if details.get("inpaint") else "")
        return {"kind": kind, "prediction": details.get("prediction"),
                "resolution": details.get("resolution"),
                "text_encoder": details.get("text_encoder"), "hash": entry.weights_sha256}
    try:
        config = entry.config()
    except (OSError, ValueError):
        config = {}
    latent = "latent " if entry.family == "diffusion" and config.get("autoencoder") else ""
    prediction = "edm" if config.get("family") == "diffusion" else None
    return {"kind": latent + entry.family, "prediction": prediction,
            "resolution": config.get("image_size"), "text_encoder": config.get("text_encoder"),
            "hash": entry.weights_sha256}


@models_app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")
                ) -> None:
    """List bundled and registered models: kind, prediction type, resolution, text encoder, hash."""
    entries = Registry().entries()
    if as_json:
        print(json.dumps([{"name": e.name, "family": e.family, "source": e.source, "path": e.path,
                           **describe_entry(e), "files": e.files} for e in entries], indent=2))
        return
    table = Table(title="imagesynth models")
    for column in ("name", "kind", "prediction", "resolution", "text encoder", "hash", "source",
                   "size", "path"):
        table.add_column(column)
    for e in entries:
        about = describe_entry(e)
        table.add_row(e.name, about["kind"], str(about["prediction"] or "-"),
                      str(about["resolution"] or "-"), str(about["text_encoder"] or "-"),
                      (about["hash"] or "-")[:12], e.source, _megabytes(e.size_bytes()), e.path)
    console.print(table if entries else "No models yet: bundled models live in models/, "
                  "and `imagesynth models add PATH` registers your own.")


@models_app.command("verify")
def verify_models(name: Optional[str] = typer.Argument(None, help="Model to verify (all if omitted).")
                  ) -> None:
    """Re-hash model files and compare with the recorded SHA-256 values."""
    registry = Registry()
    entries = [registry.get(name)] if name else registry.entries()
    failed = []
    for entry in entries:
        problems = registry.verify(entry)
        status = "[green]ok[/]" if not problems else f"[red]{'; '.join(problems)}[/]"
        console.print(f"{entry.name}: {status}")
        if problems:
            failed.append(entry.name)
    if failed:
        raise IntegrityError(f"{len(failed)} model(s) failed verification: {', '.join(failed)}",
                             field="model", fix="restore the files or re-add the models")


@models_app.command("add")
def add_model(path: Path = typer.Argument(..., help="Model folder (config.json + weights) or a weights file."),
              name: Optional[str] = typer.Option(None, help="Registry name (default: folder/file name)."),
              trust_pickle: Optional[str] = typer.Option(
                  None, "--trust-pickle", metavar="SHA256",
                  help="Allow full unpickling of this exact .ckpt/.pt/.bin file (its SHA-256)."),
              prediction_type: Optional[str] = typer.Option(
                  None, "--prediction-type",
                  help="Stable Diffusion only: epsilon or v_prediction, overriding detection."),
              config: Optional[Path] = typer.Option(
                  None, "--config",
                  help="Stable Diffusion single file only: a diffusers folder whose configs fit "
                       "it (default: the shipped SD 1.5 / 2.1 / XL configs).")
              ) -> None:
    """Validate a local model and register it with the SHA-256 of each file."""
    entry = Registry().add(path, name=name, trust_pickle=trust_pickle,
                           prediction_type=prediction_type, config=config)
    console.print(f"[green]registered[/] {entry.name} ({entry.family}, {len(entry.files)} files, "
                  f"{_megabytes(entry.size_bytes())}) from {entry.path}")


@models_app.command("remove")
def remove_model(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """Forget a registered user model (files are kept)."""
    Registry().remove(name)
    console.print(f"removed {name} from the registry")


@models_app.command("half")
def half_model(name: str = typer.Argument(..., help="Model name or folder (an imagesynth model)."),
               out: Path = typer.Option(..., help="Folder for the fp16 copy (must not exist).")
               ) -> None:
    """Copy a model with its float32 weights stored as float16: half the file; loaders upcast."""
    from ..registry import half_precision_copy

    folder = half_precision_copy(name, out)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    console.print(f"[green]wrote[/] {folder} (weights {_megabytes(size)})")
