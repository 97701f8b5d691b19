"""The `imagesynth` command: a thin Typer app; each sub-command lives in its own module."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ImageSynthError

app = typer.Typer(
    name="imagesynth",
    help="Offline-first image synthesis: diffusion, CLIP-guided generation, CLIP and metrics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True, soft_wrap=True)


def _register() -> None:
    """Import the command modules; each adds its commands/sub-apps to `app`."""
    from . import (clip_apps, compare, control, data, doctor, dream, edit, evaluate,  # noqa: F401
                   generate, models, personalise, sample, serve, train, train_autoencoder,
                   train_diffusion, train_families)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on `argv` and return the exit code (2 usage error, 1 runtime error)."""
    _register()
    try:
        result = app(args=argv, prog_name="imagesynth", standalone_mode=False)
    except ImageSynthError as exc:
        err_console.print(f"[bold red]error:[/] {escape(exc.one_line())}", highlight=False)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[bold red]interrupted[/]")
        return 130
    except typer.exceptions.TyperException as exc:  # usage errors from the parser
        exc.show()
        return getattr(exc, "exit_code", 2)
    return result if isinstance(result, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
