"""The `imagesynth` command: a thin Typer app; each sub-command lives in its own module."""

from __future__ import annotations

import contextlib
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ConfigError, ImageSynthError, UsageError

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
    from . import (clip_apps, compare, control, data, doctor, dream, edit,  # noqa: F401
                   edit_clip, evaluate,
                   generate, models, personalise, sample, serve, sweep, train,
                   train_autoencoder, train_diffusion, train_families, translate)


#: commands whose family code is data-parallel under torchrun (rank 0 writes the model folder)
TORCHRUN_COMMANDS = ("train diffusion", "train gan", "train flow")


def _check_torchrun_command(argv: list[str]) -> None:
    """With several torchrun processes, refuse a command that is not data-parallel yet."""
    if os.environ.get("WORLD_SIZE", "1").strip() in ("", "0", "1"):
        return
    command = " ".join([word for word in argv if not word.startswith("-")][:2])
    if command not in TORCHRUN_COMMANDS:
        raise ConfigError(f"`imagesynth {command}` runs in one process only",
                          field="nproc_per_node", fix="run it without torchrun; data-parallel: "
                                                      + ", ".join(TORCHRUN_COMMANDS))


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on `argv` and return the exit code (2 usage error, 1 runtime error)."""
    _register()
    # Under torchrun every process runs the same command: rank 0 alone prints its output.
    rank = os.environ.get("RANK", "0")
    quiet = contextlib.redirect_stdout(open(os.devnull, "w")) if rank != "0" else \
        contextlib.nullcontext()
    try:
        with quiet:
            _check_torchrun_command(sys.argv[1:] if argv is None else argv)
            result = app(args=argv, prog_name="imagesynth", standalone_mode=False)
    except ImageSynthError as exc:
        # A usage error is the same in every process, so rank 0 reports it once.
        if rank == "0" or not isinstance(exc, UsageError):
            prefix = "" if rank == "0" else f"rank {rank} "
            err_console.print(f"[bold red]{prefix}error:[/] {escape(exc.one_line())}",
                              highlight=False)
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
