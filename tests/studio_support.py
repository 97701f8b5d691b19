"""Start the real studio server (and its worker) on a free loopback port for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_tiny_model(root: Path, name: str = "tiny") -> Path:
    """Train a 16 px diffusion model for 3 steps and register it as `name` (in IMAGESYNTH_HOME)."""
    from imagesynth.data import ShapesConfig, build_shapes_dataset
    from imagesynth.diffusion.training import train_diffusion
    from imagesynth.registry import Registry

    build_shapes_dataset(root / "data", ShapesConfig(count=16, size=16, seed=0))
    result = train_diffusion(root / "data", root / "run", preset="tiny",
                             overrides=dict(max_steps=3, batch_size=4), show_progress=False)
    Registry().add(result.model_dir, name=name)
    return result.model_dir


class StudioProcess:
    """`imagesynth serve` in a subprocess: start, wait until it answers, request, kill."""

    def __init__(self, data_dir: Path, *, token: str | None = None, host: str = "127.0.0.1",
                 model: str = "tiny", env: dict[str, str] | None = None,
                 port: int | None = None):
        self.data_dir, self.token, self.host, self.model = data_dir, token, host, model
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The serve command line."""
        command = [sys.executable, "-m", "imagesynth", "serve", "--host", self.host, "--port",
                   str(self.port), "--data-dir", str(self.data_dir), "--model", self.model]
        return command + (["--token", self.token] if self.token else [])

    def start(self, timeout: float = 90.0) -> "StudioProcess":
        """Start the server and wait (bounded) until /api/status answers."""
        log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command(), env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                if self.get("/api/status").status_code in (200, 401):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not answer in time")

    def headers(self, extra: dict | None = None) -> dict:
        """Default headers: the bearer token when one is set."""
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        return {**headers, **(extra or {})}

    def get(self, path: str, **kwargs) -> httpx.Response:
        """GET with the token."""
        kwargs["headers"] = self.headers(kwargs.get("headers"))
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, json=None, **kwargs) -> httpx.Response:
        """POST JSON with the token."""
        kwargs["headers"] = self.headers(kwargs.get("headers"))
        return httpx.post(self.url + path, json=json, timeout=120, **kwargs)

    def submit(self, kind: str, config: dict) -> str:
        """Queue a job and return its id (asserting 202)."""
        response = self.post("/api/jobs", {"kind": kind, "config": config})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def wait(self, job_id: str, timeout: float = 120.0) -> dict:
        """Poll (bounded) until the job ends; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/api/jobs/{job_id}").json()
            if job["state"] in ("done", "failed", "cancelled"):
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} did not finish")

    def kill(self) -> None:
        """SIGKILL the server (its worker dies with it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), then kill it if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "StudioProcess":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
