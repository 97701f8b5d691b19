"""The studio's HTTP API and page: FastAPI over the durable store; the worker does the work.

Routes take and give JSON; images are addressed by opaque id only, so no value a client sends
is ever joined to a path. Jobs are validated by the same typed configs as the CLI (422 naming
the field) and committed before 202 is returned.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from .. import __version__
from ..errors import (ConfigError, ImageSynthError, InputImageError, OversizedImageError,
                      UnsupportedImageError)
from .jobs import KINDS, REFERENCE, WEIGHTED_REFERENCE, config_json, parse_job, schema
from .security import (COOKIE, BodyTooLarge, SecurityMiddleware, is_loopback, login_token,
                       loopback_hosts, path_roots, scrub_paths)
from .store import TERMINAL, Store, is_id, is_regular_file, new_id
from .supervisor import WorkerSupervisor, recover_at_start

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: request bodies above this are refused (a base64 upload is 4/3 of the image file)
MAX_BODY_BYTES = 32 * 1024 * 1024
#: uploads above this many pixels are refused before decoding (the bounded reader's cap)
MAX_UPLOAD_PIXELS = 16 * 1024 * 1024
MAX_CARD_CHARS = 64 * 1024
STREAM_POLL_SECONDS = 0.1
STREAM_MAX_SECONDS = 3600.0


@dataclass(frozen=True)
class StudioSettings:
    """How one studio server runs (what `imagesynth serve` flags set)."""

    data_dir: str
    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None
    default_model: str = "emoji"
    model_memory_mb: int = 4096
    start_worker: bool = True

    def __post_init__(self):
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"binding to {self.host} exposes the studio beyond this machine",
                              field="token", fix="pass --token SECRET (or bind 127.0.0.1)")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("is shorter than 8 characters", field="token",
                              fix="use a long random token, e.g. `openssl rand -hex 16`")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"must be in 1-65535, got {self.port}", field="port")


class ApiError(Exception):
    """A refusal with a status code and a field-naming message."""

    def __init__(self, status: int, field: str | None, message: str, fix: str | None = None):
        self.status, self.field, self.message, self.fix = status, field, message, fix


def error_status(exc: ImageSynthError) -> int:
    """HTTP status of a library error: bad input is 4xx, never 500."""
    if isinstance(exc, OversizedImageError):
        return 413
    if isinstance(exc, UnsupportedImageError):
        return 415
    if isinstance(exc, (InputImageError, ConfigError)) or exc.exit_code == 2:
        return 422
    return 500


def _error(status: int, body: dict) -> JSONResponse:
    return JSONResponse({"error": body}, status_code=status, headers={"cache-control": "no-store"})


def decode_base64(data: object, field: str) -> bytes:
    """Bytes of a base64 string or data URL (what A1111 clients and the page send)."""
    if not isinstance(data, str) or not data:
        raise ApiError(422, field, "must be a base64 string or data URL")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raise ApiError(422, field, "is not valid base64") from None


class Studio:
    """The app's state: settings, store, worker supervisor, and the model list."""

    def __init__(self, settings: StudioSettings):
        self.settings = settings
        self.store = Store(settings.data_dir)
        self.supervisor = WorkerSupervisor(self.store, model_memory_mb=settings.model_memory_mb)
        self.path_roots = path_roots(self.store.root)
        self._models: tuple[float, list[dict]] = (0.0, [])

    def models(self) -> list[dict]:
        """Bundled and registered models with their cards (cached a few seconds; no paths)."""
        if time.monotonic() - self._models[0] < 5:
            return self._models[1]
        from ..registry import SD_FAMILY, Registry

        models = []
        for entry in Registry().entries():
            if entry.family == SD_FAMILY:  # a user's Stable Diffusion: generated like ours
                from ..sd.pipeline import DEFAULTS

                details = entry.details
                config = {"family": "diffusion", "image_size": details.get("resolution"),
                          "diffusion": DEFAULTS, "kind": SD_FAMILY}
                card = (f"Stable Diffusion ({details.get('arch')}, "
                        f"{details.get('prediction')}, {details.get('text_encoder')})")
            else:
                try:
                    config = entry.config()
                except (OSError, ValueError):
                    continue
                card_path = entry.root / "CARD.md" if entry.root.is_dir() else None
                card = card_path.read_text(errors="replace")[:MAX_CARD_CHARS] \
                    if card_path is not None and card_path.is_file() else ""
            diffusion = config.get("diffusion", {})
            model = {"name": entry.name, "family": config.get("family", entry.family),
                     "source": entry.source, "image_size": config.get("image_size"),
                     "default_steps": diffusion.get("default_steps"),
                     "default_sampler": diffusion.get("default_sampler"),
                     "default_guidance": diffusion.get("default_guidance"),
                     "sha256": entry.weights_sha256, "card": card,
                     "kind": config.get("kind", config.get("family", entry.family))}
            if model["family"] == "controlnet":  # which maps it reads, which weights it fits
                model["condition"] = config.get("condition")
                model["base_sha256"] = (config.get("base_model") or {}).get("sha256")
            models.append(model)
        self._models = (time.monotonic(), models)
        return models

    def model_families(self) -> dict[str, str]:
        """Names a job may use, with their families (a ControlNet field takes "controlnet")."""
        return {model["name"]: model["family"] for model in self.models()}

    def check_references_exist(self, kind: str, config) -> None:
        """Every `upload:ID` / `image:ID` in a job names something stored (422 otherwise)."""
        from .jobs import IMAGE_FIELDS, LIST_IMAGE_FIELDS

        pairs = [(name, getattr(config, name)) for name in IMAGE_FIELDS.get(kind, ())]
        for name in LIST_IMAGE_FIELDS.get(kind, ()):
            pairs += [(f"{name}[{i}]", v) for i, v in enumerate(getattr(config, name))]
        for name, value in pairs:
            if value is None:
                continue
            match = REFERENCE.match(value) or WEIGHTED_REFERENCE.match(value)
            found = (self.store.upload(match.group(2)) if match.group(1) == "upload"
                     else self.store.image(match.group(2), trashed=None))
            if found is None:
                raise ApiError(422, name, f"no such image {value!r}",
                               "upload it with POST /api/uploads or pick a gallery image")

    def check_control_bases(self, kind: str, config) -> None:
        """Each ControlNet was trained for the job's model's weights (else a 422 now, rather
        than a failed job later)."""
        if kind != "generate" or not config.control_model:
            return
        models = {model["name"]: model for model in self.models()}
        wanted = (models.get(config.model) or {}).get("sha256")
        for i, name in enumerate(config.control_model):
            base = (models.get(name) or {}).get("base_sha256")
            if base is not None and base != wanted:
                trained_for = next((m["name"] for m in models.values()
                                    if m["sha256"] == base and m["family"] != "controlnet"),
                                   f"weights {base[:12]}")
                raise ApiError(422, f"control_model[{i}]",
                               f"{name!r} was trained for {trained_for}, not {config.model}",
                               f"use model {trained_for}, or a ControlNet trained on "
                               f"{config.model} (`imagesynth train controlnet`)")

    def submit(self, body: object) -> dict:
        """Validate and durably queue a job; the 202 body."""
        kind, config = parse_job(body, self.model_families())
        self.check_references_exist(kind, config)
        self.check_control_bases(kind, config)
        job_id = self.store.add_job(kind, config_json(config))
        return {"id": job_id, "kind": kind, "state": "queued"}

    def save_upload(self, data: bytes) -> dict:
        """Decode an upload through the bounded reader and store it re-encoded as PNG."""
        from ..io.files import atomic_path
        from ..io.images import open_image

        image = open_image(data, mode=None, field="image", max_pixels=MAX_UPLOAD_PIXELS,
                           max_bytes=MAX_BODY_BYTES)
        if image.mode not in ("RGB", "RGBA", "L"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        upload_id = new_id()
        with atomic_path(self.store.root / "uploads" / f"{upload_id}.png") as tmp:
            image.save(tmp, format="PNG")  # re-encoded: no foreign chunk is ever served back
        self.store.add_upload(upload_id, f"{upload_id}.png", image.width, image.height)
        return {"id": upload_id, "ref": f"upload:{upload_id}", "width": image.width,
                "height": image.height}


def _public_image(image: dict) -> dict:
    return {key: value for key, value in image.items() if key not in ("file", "thumb")}


def create_app(settings: StudioSettings) -> FastAPI:
    """The FastAPI app for `settings` (the worker starts with the app's lifespan)."""
    studio = Studio(settings)

    @asynccontextmanager
    async def lifespan(_app):
        recover_at_start(studio.store)
        if settings.start_worker:
            studio.supervisor.start()
        yield
        if settings.start_worker:
            await asyncio.to_thread(studio.supervisor.stop)

    # docs_url=None: FastAPI's own /docs page loads Swagger UI from a CDN with an inline script;
    # the studio serves the same UI from a package and a static file instead (offline, CSP-clean)
    app = FastAPI(title="imagesynth studio", version=__version__, lifespan=lifespan,
                  description="Local web studio and HTTP API over imagesynth's jobs.",
                  docs_url=None, redoc_url=None)
    app.state.studio = studio

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return _error(exc.status, {"error": "ApiError", "field": exc.field,
                                   "message": exc.message, "fix": exc.fix})

    @app.exception_handler(ImageSynthError)
    async def library_error(_request, exc: ImageSynthError):
        return _error(error_status(exc), {
            key: scrub_paths(value, studio.path_roots) if isinstance(value, str) else value
            for key, value in exc.to_dict().items()})

    @app.exception_handler(BodyTooLarge)
    async def too_large(_request, _exc):
        return _error(413, {"error": "ApiError", "field": "body",
                            "message": f"the body is over {MAX_BODY_BYTES} bytes",
                            "fix": "send a smaller image"})

    async def json_body(request: Request) -> object:
        raw = await request.body()
        try:
            return json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(422, "body", f"is not valid JSON ({exc})",
                           "send a JSON object") from None

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-store"})

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return FileResponse(STATIC_DIR / "docs.html", headers={"cache-control": "no-store"})

    @app.get("/login", include_in_schema=False)
    async def login(request: Request):
        token = login_token(request.scope.get("query_string", b""))
        import hmac

        if not settings.token or not token or not hmac.compare_digest(token.encode(),
                                                                      settings.token.encode()):
            raise ApiError(401, "token", "the login link's token is wrong",
                           "use the link `imagesynth serve` printed")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, settings.token, httponly=True, samesite="strict", path="/")
        return response

    @app.get("/api/status")
    async def status():
        """Queue counts and whether the worker runs."""
        return {"version": __version__, "queue": studio.store.counts(),
                "worker_alive": studio.supervisor.alive, "worker_restarts":
                studio.supervisor.restarts}

    @app.get("/api/schema")
    async def job_schema():
        """Every job kind's fields, types, defaults and help (the page's forms)."""
        from .jobs import dream_cli_help

        return {**schema({"dream": dream_cli_help()}), "default_model": settings.default_model}

    @app.get("/api/models")
    async def models():
        """Bundled and registered models, with their cards."""
        return {"models": studio.models(), "default": settings.default_model}

    @app.post("/api/uploads", status_code=201)
    async def upload(request: Request):
        """Store an image (JSON {"data": base64 or data URL}); returns its `upload:ID`."""
        body = await json_body(request)
        data = decode_base64(body.get("data") if isinstance(body, dict) else None, "data")
        return await asyncio.to_thread(studio.save_upload, data)

    @app.get("/api/uploads/{upload_id}")
    async def get_upload(upload_id: str):
        """An uploaded image, by id."""
        row = studio.store.upload(upload_id) if is_id(upload_id) else None
        if row is None:
            raise ApiError(404, "id", "no such upload")
        return _png(studio.store.upload_path(row), f"upload-{upload_id}.png")

    @app.post("/api/metadata")
    async def metadata(request: Request):
        """Read generation settings from a PNG (imagesynth, A1111, ComfyUI, InvokeAI)."""
        from ..io.metadata_import import read_generation_settings

        body = await json_body(request)
        data = decode_base64(body.get("data") if isinstance(body, dict) else None, "data")
        return (await asyncio.to_thread(read_generation_settings, data)).to_dict()

    @app.post("/api/jobs", status_code=202)
    async def submit(request: Request):
        """Queue a job: {"kind": "generate", "config": {...}} (committed before 202)."""
        result = await asyncio.to_thread(studio.submit, await json_body(request))
        return JSONResponse(result, status_code=202,
                            headers={"location": f"/api/jobs/{result['id']}"})

    @app.get("/api/jobs")
    async def list_jobs(limit: int = 50):
        """The newest jobs (the queue and its history)."""
        return {"jobs": studio.store.jobs(limit=max(1, min(limit, 500))),
                "queue": studio.store.counts()}

    def _job(job_id: str) -> dict:
        job = studio.store.job(job_id) if is_id(job_id) else None
        if job is None:  # unknown is never reported as done
            raise ApiError(404, "id", "no such job")
        return job

    @app.get("/api/jobs/{job_id}")
    async def get_job(job_id: str):
        """State, progress (with previews), error and result of a job."""
        return _job(job_id)

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        """Cancel a queued job, or stop a running one at its next step (no file is written)."""
        _job(job_id)
        return {"id": job_id, "state": studio.store.request_cancel(job_id)}

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, request: Request):
        """Server-Sent Events: `progress` (step, sigma, ETA, previews) then one `end`."""
        _job(job_id)

        async def stream():
            seen, started, last_send = -1, time.monotonic(), 0.0
            while time.monotonic() - started < STREAM_MAX_SECONDS:
                if await request.is_disconnected():
                    return
                marker = studio.store.progress_seq(job_id)
                if marker is None:
                    return
                if marker[0] != seen:
                    seen = marker[0]
                    job = studio.store.job(job_id)
                    event = "end" if job["state"] in TERMINAL else "progress"
                    yield f"event: {event}\ndata: {json.dumps(job)}\n\n"
                    last_send = time.monotonic()
                    if event == "end":
                        return
                elif time.monotonic() - last_send > 15:
                    yield ": keep-alive\n\n"
                    last_send = time.monotonic()
                await asyncio.sleep(STREAM_POLL_SECONDS)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store"})

    @app.get("/api/history")
    async def history(q: str = "", model: str = "", limit: int = 60, offset: int = 0,
                      trashed: bool = False):
        """Gallery images, newest first, filtered by prompt text and model."""
        images, total = studio.store.images(query=q[:500], model=model[:200],
                                            limit=max(1, min(limit, 500)),
                                            offset=max(0, offset), trashed=trashed)
        return {"images": [_public_image(i) for i in images], "total": total,
                "models": studio.store.image_models()}

    def _image(image_id: str, trashed: bool | None = None) -> dict:
        image = studio.store.image(image_id, trashed=trashed) if is_id(image_id) else None
        if image is None:
            raise ApiError(404, "id", "no such image")
        return image

    @app.get("/api/images/{image_id}")
    async def get_image(image_id: str, download: bool = False):
        """A generated PNG (with its recipe chunks), by id."""
        image = _image(image_id)
        return _png(studio.store.image_path(image), f"imagesynth-{image_id}.png", download)

    @app.get("/api/images/{image_id}/thumb")
    async def get_thumb(image_id: str):
        """A thumbnail (at most 256 px), by id."""
        image = _image(image_id)
        return _png(studio.store.image_path(image, thumb=True), f"thumb-{image_id}.png")

    @app.get("/api/images/{image_id}/recipe")
    async def get_recipe(image_id: str):
        """The full recipe of an image."""
        return _public_image(_image(image_id))

    @app.post("/api/images/{image_id}/reproduce", status_code=202)
    async def reproduce(image_id: str, request: Request):
        """Queue `reproduce` for an image (body may give init_image / mask references)."""
        _image(image_id)
        body = await json_body(request)
        extra = body if isinstance(body, dict) else {}
        return await asyncio.to_thread(studio.submit, {
            "kind": "reproduce", "config": {**extra, "image": f"image:{image_id}"}})

    @app.delete("/api/images/{image_id}")
    async def delete(image_id: str):
        """Move an image to the trash (restore it, or empty the trash, later)."""
        _image(image_id, trashed=False)
        studio.store.set_trashed(image_id, True)
        return {"id": image_id, "trashed": True}

    @app.post("/api/images/{image_id}/restore")
    async def restore(image_id: str):
        """Bring an image back from the trash."""
        _image(image_id, trashed=True)
        studio.store.set_trashed(image_id, False)
        return {"id": image_id, "trashed": False}

    @app.post("/api/trash/empty")
    async def empty_trash():
        """Delete every trashed image for good."""
        return {"deleted": studio.store.empty_trash()}

    from .a1111 import add_a1111_routes

    add_a1111_routes(app, studio)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    allowed = loopback_hosts(settings.host, settings.port) if is_loopback(settings.host) else None
    return SecurityMiddleware(app, token=settings.token, allowed_hosts=allowed,
                              max_body=MAX_BODY_BYTES)


def _png(path: Path, name: str, download: bool = False) -> FileResponse:
    if not is_regular_file(path):  # gone, or replaced by a link: never followed
        raise ApiError(404, "id", "the image file is gone")
    disposition = "attachment" if download else "inline"
    return FileResponse(path, media_type="image/png", headers={
        "content-disposition": f'{disposition}; filename="{name}"',
        "cache-control": "private, max-age=3600"})


__all__ = ["KINDS", "StudioSettings", "create_app", "error_status"]
