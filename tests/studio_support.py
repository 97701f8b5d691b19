"""Start the real studio server (and its worker) on a free loopback port for tests."""

from __future__ import annotations

import base64
import io
import json
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
    from imagesynth.families.diffusion import train_diffusion
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
        #: the text of every JSON response this helper received (for "no paths/secrets" checks)
        self.json_seen: list[str] = []

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

    def _seen(self, response: httpx.Response) -> httpx.Response:
        if response.headers.get("content-type", "").startswith("application/json"):
            self.json_seen.append(response.text)
        return response

    def get(self, path: str, **kwargs) -> httpx.Response:
        """GET with the token."""
        kwargs["headers"] = self.headers(kwargs.get("headers"))
        kwargs.setdefault("timeout", 30)
        return self._seen(httpx.get(self.url + path, **kwargs))

    def post(self, path: str, json=None, **kwargs) -> httpx.Response:
        """POST JSON with the token."""
        kwargs["headers"] = self.headers(kwargs.get("headers"))
        kwargs.setdefault("timeout", 120)
        return self._seen(httpx.post(self.url + path, json=json, **kwargs))

    def delete(self, path: str, **kwargs) -> httpx.Response:
        """DELETE with the token."""
        kwargs["headers"] = self.headers(kwargs.get("headers"))
        return self._seen(httpx.delete(self.url + path, timeout=30, **kwargs))

    def events(self, job_id: str, timeout: float = 120.0) -> list[tuple[str, dict]]:
        """Read a job's Server-Sent Events stream to its `end` event (bounded); (event, data)."""
        events: list[tuple[str, dict]] = []
        deadline = time.monotonic() + timeout
        with httpx.stream("GET", f"{self.url}/api/jobs/{job_id}/events", headers=self.headers(),
                          timeout=httpx.Timeout(30, read=30)) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            name, data = None, []
            for line in response.iter_lines():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the event stream of {job_id} did not end")
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and name is not None:
                    events.append((name, json.loads("\n".join(data))))
                    if name == "end":
                        break
                    name, data = None, []
        return events

    def submit(self, kind: str, config: dict) -> str:
        """Queue a job and return its id (asserting 202)."""
        response = self.post("/api/jobs", {"kind": kind, "config": config})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def wait_state(self, job_id: str, predicate, timeout: float = 120.0) -> dict:
        """Poll (bounded) until `predicate(job)` holds; return the job."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/api/jobs/{job_id}").json()
            if predicate(job):
                return job
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} never reached the awaited state")

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


def png_bytes(image) -> bytes:
    """A PIL image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    """Bytes as base64 text (what uploads and A1111 clients send)."""
    return base64.b64encode(data).decode("ascii")


def pixels(data: bytes) -> bytes:
    """The RGB pixels of an encoded image (PNG bytes differ by their timestamped recipe)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


def _data_files(data_dir: Path) -> dict[str, set[str]]:
    """Names in each folder of a studio data dir that holds files."""
    return {folder: {p.name for p in (data_dir / folder).iterdir()}
            for folder in ("images", "thumbs", "uploads", "trash", "tmp")
            if (data_dir / folder).is_dir()}


def _recorded_files(data_dir: Path) -> tuple[list[dict], set[str], set[str]]:
    """(image rows, recorded image files, recorded thumbnails), read from the SQLite file."""
    import sqlite3

    db = sqlite3.connect(data_dir / "studio.sqlite", timeout=30)
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(row) for row in db.execute(
            "SELECT id, job_id, idx, file, thumb, seed, trashed FROM images")]
    finally:
        db.close()
    return rows, {r["file"] for r in rows}, {r["thumb"] for r in rows}


def durability_run(data_dir: Path, *, jobs: int = 30, images_per_job: int = 2, steps: int = 4,
                   poison_at: int | None = None, kill_after_done: int = 4, model: str = "tiny",
                   timeout: float = 900.0) -> dict:
    """Queue `jobs` jobs, SIGKILL the server while one runs, restart on the same data dir, drain.

    Job `poison_at` has a prompt the worker's fault injection (`IMAGESYNTH_SERVE_FAULT`) turns
    into a process crash each time it starts. Returns the measured figures and, under
    `"jobs"` / `"rows"` / `"files"`, what the assertions need.
    """
    from imagesynth.serve.worker import FAULT_ENV

    poison = "poison " + os.urandom(4).hex()
    env = {FAULT_ENV: f"exit-on-prompt:{poison}"}
    deadline = time.monotonic() + timeout
    server = StudioProcess(data_dir, env=env, model=model).start()
    ids, prompts = [], []
    submitted = time.monotonic()
    for i in range(jobs):
        prompt = poison if i == poison_at else f"durable job {i}"
        prompts.append(prompt)
        ids.append(server.submit("generate", {"prompt": prompt, "model": model, "seed": 100 * i,
                                              "n": images_per_job, "steps": steps}))
    submit_seconds = time.monotonic() - submitted
    # wait until `kill_after_done` jobs are done and another is running: mid-sampling when
    # that is seen within 30 s of the count being reached, else in whatever phase it is
    killed, counted = None, None
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while time.monotonic() < deadline:
            counts = client.get("/api/status").json()["queue"]
            if counts.get("done", 0) < kill_after_done:
                time.sleep(0.05)
                continue
            counted = counted or time.monotonic()
            # the A1111 progress poll names the running job
            running = client.get("/sdapi/v1/progress").json()["state"].get("job")
            job = client.get(f"/api/jobs/{running}").json() if running else None
            if job and job["state"] == "running" and job["config"]["prompt"] != poison and (
                    (job["progress"] or {}).get("phase") == "sampling"
                    or time.monotonic() - counted > 30):
                killed = job
                break
            time.sleep(0.005)
    if killed is None:
        server.stop()
        raise TimeoutError("no job was running to kill the server under")
    server.kill()
    killed_at = time.monotonic()
    files_at_kill = _data_files(data_dir)
    _, recorded, recorded_thumbs = _recorded_files(data_dir)
    orphans_at_kill = len(files_at_kill["images"] - recorded) + len(
        files_at_kill["thumbs"] - recorded_thumbs) + len(files_at_kill["tmp"])

    server = StudioProcess(data_dir, env=env, model=model).start()
    restart_seconds = time.monotonic() - killed_at
    final: dict[str, dict] = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while time.monotonic() < deadline:
            listed = client.get("/api/jobs", params={"limit": jobs + 10}).json()["jobs"]
            if all(job["state"] in ("done", "failed", "cancelled") for job in listed):
                break
            time.sleep(0.2)
        drained = time.monotonic()
        for job_id in ids:
            final[job_id] = client.get(f"/api/jobs/{job_id}").json()
        listed_ids = [job["id"] for job in client.get(
            "/api/jobs", params={"limit": 500}).json()["jobs"]]
        status = client.get("/api/status").json()
    server.stop()
    rows, recorded, recorded_thumbs = _recorded_files(data_dir)
    files = _data_files(data_dir)
    states = [final[job_id]["state"] for job_id in ids]
    poison_job = final[ids[poison_at]] if poison_at is not None else None
    after_poison = [final[job_id] for job_id in ids[poison_at + 1:]] if poison_at is not None \
        else []
    return {
        "figures": {
            "jobs": jobs, "images_per_job": images_per_job, "steps": steps, "model": model,
            "done": states.count("done"), "failed": states.count("failed"),
            "other": len(states) - states.count("done") - states.count("failed"),
            "not_terminal_at_timeout": sum(s not in ("done", "failed", "cancelled")
                                           for s in states),
            "jobs_listed_after_restart": len(listed_ids),
            "submit_seconds": round(submit_seconds, 3),
            "killed_job_index": ids.index(killed["id"]),
            "killed_job_step_at_kill": (killed.get("progress") or {}).get("step"),
            "killed_job_phase_at_kill": (killed.get("progress") or {}).get("phase"),
            "killed_job_final_state": final[killed["id"]]["state"],
            "killed_job_attempts": final[killed["id"]]["attempts"],
            "orphan_files_at_kill": orphans_at_kill,
            "restart_seconds": round(restart_seconds, 3),
            "drain_seconds_after_restart": round(drained - killed_at - restart_seconds, 3),
            "poison_attempts": poison_job["attempts"] if poison_job else None,
            "poison_state": poison_job["state"] if poison_job else None,
            "poison_error": (poison_job["error"] or {}).get("error") if poison_job else None,
            "jobs_after_poison_done": sum(j["state"] == "done" for j in after_poison),
            "jobs_after_poison": len(after_poison),
            "worker_restarts_after_restart": status["worker_restarts"],
            "image_rows": len(rows),
            "image_files": len(files["images"]), "thumb_files": len(files["thumbs"]),
            "unrecorded_files": len(files["images"] - recorded) + len(
                files["thumbs"] - recorded_thumbs),
            "missing_files": len(recorded - files["images"]) + len(
                recorded_thumbs - files["thumbs"]),
            "tmp_files": len(files["tmp"]) + sum(name.endswith(".tmp") for names in
                                                 files.values() for name in names),
        },
        "ids": ids, "jobs": final, "listed_ids": listed_ids, "rows": rows,
        "recorded": (recorded, recorded_thumbs), "files": files, "killed": killed["id"],
        "poison": ids[poison_at] if poison_at is not None else None,
    }
