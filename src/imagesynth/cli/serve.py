"""`imagesynth serve`: the local web studio and HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from . import app

console = Console(soft_wrap=True)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(7860, help="Port to listen on."),
    token: Optional[str] = typer.Option(None, help="Require this token on every route (header or login-link cookie)."),
    data_dir: Optional[Path] = typer.Option(None, help="Where the queue, gallery and uploads live (default: $IMAGESYNTH_HOME/studio)."),
    model: str = typer.Option("emoji", help="Default model of the page and the A1111 API."),
    model_memory_mb: int = typer.Option(4096, help="Keep loaded models up to this many MB (least recently used evicted)."),
) -> None:
    """Serve the studio: a page and an HTTP API over a durable job queue."""
    import uvicorn

    from ..paths import home
    from ..serve.app import StudioSettings, create_app

    folder = data_dir if data_dir is not None else home() / "studio"
    settings = StudioSettings(data_dir=str(folder), host=host, port=port, token=token,
                              default_model=model, model_memory_mb=model_memory_mb)
    asgi = create_app(settings)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    console.print(f"imagesynth studio: {url}login?token={token}" if token else
                  f"imagesynth studio: {url}", highlight=False)
    console.print(f"API docs: {url}docs   data: {folder}", highlight=False)
    uvicorn.Server(uvicorn.Config(asgi, host=host, port=port, log_level="warning",
                                  timeout_graceful_shutdown=5)).run()
