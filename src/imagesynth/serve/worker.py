"""The studio's worker process: claims queued jobs, runs the library calls the CLI runs, and
records results atomically. It is a separate process so a job that crashes it (a segfault, an
out-of-memory kill) takes down neither the server nor the queue: the server re-queues the job
and starts a new worker (see `supervisor`).
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import fcntl
import io
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..errors import ConfigError, ImageSynthError
from .jobs import REFERENCE, WEIGHTED_REFERENCE, rebuild
from .security import path_roots, scrub_paths
from .store import Store, is_regular_file, new_id

#: fault injection for the durability tests: `exit-on-prompt:TEXT` kills the worker process
#: (os._exit, like a segfault) whenever a generate or dream job's prompt is TEXT
FAULT_ENV = "IMAGESYNTH_SERVE_FAULT"
#: set to anything: the worker appends one JSON line of per-job timings (what its previews,
#: progress writes and file writes cost) to `worker-profile.jsonl` (benchmarks/serve.py)
PROFILE_ENV = "IMAGESYNTH_SERVE_PROFILE"
THUMB_SIDE = 256
PREVIEW_SECONDS = 0.25  # at most one progress write per this many seconds (previews excepted)
#: at most one preview per this many seconds: the event stream looks every 0.1 s, so faster
#: previews of a quick run would mostly be overwritten before anyone saw them
PREVIEW_MIN_SECONDS = 0.2


class JobCancelled(Exception):
    """The user cancelled the running job."""


class WorkerStopping(Exception):
    """The server is shutting down; the job goes back to the queue uncounted."""


def png_data_url(image: Image.Image) -> str:
    """An image as a `data:image/png;base64,...` URL for the event stream."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ModelCache:
    """Loaded pipelines and scorers kept between jobs, least recently used evicted past a budget."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()
        self._text_encoders: dict[str, Any] = {}
        self._previews: dict[str, Any] = {}  # name -> LatentPreview or None (small tensors)

    def get(self, kind: str, name: str, load: Callable[[], Any]) -> Any:
        """The cached object for (kind, name), loading (and evicting) as needed."""
        key = (kind, name)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        value = load()
        self._items[key] = (value, _module_bytes(value))
        while len(self._items) > 1 and sum(size for _, size in self._items.values()) > \
                self.max_bytes:
            self._items.popitem(last=False)
        return value

    def pipeline(self, name: str):
        """A diffusion pipeline by registry name (text encoders shared between models)."""
        from ..pipeline import load_pipeline
        from ..registry import Registry
        from ..text import load_text_encoder

        def load():
            encoder_name = Registry().get(name).config().get("text_encoder", "minilm")
            if encoder_name not in self._text_encoders:
                self._text_encoders[encoder_name] = load_text_encoder(encoder_name)
            return load_pipeline(name, text_encoder=self._text_encoders[encoder_name])

        return self.get("pipeline", name, load)

    def preview(self, name: str, pipe) -> Callable[[Any], list[Image.Image]]:
        """The live-preview function of a loaded pipeline (see `previews`), fitted once."""
        from .previews import fitted_preview

        if name not in self._previews:
            self._previews[name] = fitted_preview(pipe)
        return self._previews[name] or pipe.preview

    def scorer(self, name: str | None):
        """A CLIP scorer by registry name (None: the default CLIP)."""
        from ..apps.embedding import default_model_spec, resolve_scorer

        name = name or default_model_spec()
        return self.get("scorer", name, lambda: resolve_scorer(name, "cpu"))


def _module_bytes(value: Any) -> int:
    """Parameter bytes of the torch modules an object holds (its memory cost in the cache)."""
    import torch

    total, seen = 0, set()
    for attribute in vars(value).values() if hasattr(value, "__dict__") else ():
        if isinstance(attribute, torch.nn.Module):
            for parameter in attribute.parameters():
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    total += parameter.numel() * parameter.element_size()
    return total


class Progress:
    """Writes a running job's progress (step, sigma, ETA, previews) and checks for cancel."""

    def __init__(self, store: Store, job_id: str, stopping: Callable[[], bool]):
        self.store, self.job_id, self.stopping = store, job_id, stopping
        self.started = time.monotonic()
        self._last_write = 0.0
        #: seconds spent per overhead (the profile `PROFILE_ENV` writes)
        self.seconds: dict[str, float] = {"preview_decode_s": 0.0, "preview_encode_s": 0.0,
                                          "progress_write_s": 0.0, "store_images_s": 0.0}
        self.previews = 0

    @contextmanager
    def timed(self, name: str):
        """Add the seconds the block takes to `self.seconds[name]`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def __call__(self, step: int, total: int, *, sigma: float | None = None,
                 previews: list[Image.Image] | None = None, phase: str = "sampling",
                 extra: dict | None = None) -> None:
        if self.stopping():
            raise WorkerStopping()
        now = time.monotonic()
        if previews is None and now - self._last_write < PREVIEW_SECONDS and step < total:
            return
        if self.store.cancel_requested(self.job_id):
            raise JobCancelled()
        elapsed = now - self.started
        eta = elapsed / step * (total - step) if step > 0 else None
        progress = {"step": step, "total": total, "phase": phase, "elapsed_s": round(elapsed, 3),
                    "eta_s": round(eta, 3) if eta is not None else None, **(extra or {})}
        if sigma is not None:
            progress["sigma"] = sigma
        if previews is not None:
            with self.timed("preview_encode_s"):
                progress["previews"] = [png_data_url(image) for image in previews]
            self.previews += 1
        with self.timed("progress_write_s"):
            self.store.set_progress(self.job_id, progress)
        self._last_write = now


class Runner:
    """Runs one claimed job to a terminal state."""

    def __init__(self, store: Store, cache: ModelCache, stopping: Callable[[], bool]):
        self.store, self.cache, self.stopping = store, cache, stopping
        self.fault = os.environ.get(FAULT_ENV, "")
        self.profile = bool(os.environ.get(PROFILE_ENV))
        self.roots = path_roots(store.root)

    def _error(self, error: dict) -> dict:
        """An error dict with every server path scrubbed from its texts."""
        return {key: scrub_paths(value, self.roots) if isinstance(value, str) else value
                for key, value in error.items()}

    def resolve(self, reference: str, field: str) -> Path:
        """`upload:ID` / `image:ID` -> the file the server stored for it."""
        match = REFERENCE.match(reference) or WEIGHTED_REFERENCE.match(reference)
        row = None
        if match and match.group(1) == "upload":
            row = self.store.upload(match.group(2))
            path = self.store.upload_path(row) if row else None
        elif match:
            row = self.store.image(match.group(2), trashed=None)
            path = self.store.image_path(row) if row else None
        if row is None or path is None or not is_regular_file(path):
            raise ConfigError(f"no such image {reference!r}", field=field,
                              fix="upload it again, or pick an image from the gallery")
        return path

    def run(self, job: dict) -> None:
        """Run `job`; the terminal state and result are written by this call."""
        job_id, kind = job["id"], job["kind"]
        progress = Progress(self.store, job_id, self.stopping)
        try:
            config = rebuild(kind, job["config"])
            self._maybe_crash(config)
            result, images = getattr(self, f"_run_{kind}")(config, progress)
        except JobCancelled:
            self.store.finish(job_id, "cancelled")
        except WorkerStopping:
            self._requeue(job_id)
        except ImageSynthError as exc:
            self.store.finish(job_id, "failed", error=self._error(exc.to_dict()))
        except Exception as exc:  # a bug or an environment failure: report it, keep serving
            with open(self.store.root / "worker.log", "a") as log:
                log.write(f"job {job_id}\n{traceback.format_exc()}\n")
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            self.store.finish(job_id, "failed", error=self._error({
                "error": "InternalError", "field": None, "message": message, "fix": None}))
        else:
            with progress.timed("finish_s"):
                self.store.finish(job_id, "done", result=result, images=images)
        if self.profile:
            line = {"job": job_id, "kind": kind, "run_s": time.monotonic() - progress.started,
                    "previews": progress.previews, **progress.seconds}
            with open(self.store.root / "worker-profile.jsonl", "a") as log:
                log.write(json.dumps(line) + "\n")

    def _requeue(self, job_id: str) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE jobs SET state = 'queued', attempts = attempts - 1, progress = NULL,"
                       " progress_seq = progress_seq + 1 WHERE id = ? AND state = 'running'",
                       (job_id,))

    def _maybe_crash(self, config: Any) -> None:
        if self.fault.startswith("exit-on-prompt:") and \
                getattr(config, "prompt", None) == self.fault.split(":", 1)[1]:
            os._exit(70)

    def _store_images(self, images: list[Image.Image], recipes: list[dict],
                      model: str) -> list[dict]:
        """Write images and thumbnails into place (atomic renames); rows for `finish`."""
        from ..io.files import atomic_path
        from ..io.pngmeta import save_png

        rows = []
        for index, (image, recipe) in enumerate(zip(images, recipes)):
            image_id = new_id()
            save_png(image, self.store.root / "images" / f"{image_id}.png", recipe)
            thumb = image.copy()
            thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
            with atomic_path(self.store.root / "thumbs" / f"{image_id}.png") as tmp:
                thumb.save(tmp, format="PNG")
            rows.append({"id": image_id, "idx": index, "file": f"{image_id}.png",
                         "thumb": f"{image_id}.png", "prompt": str(recipe.get("prompt", "")),
                         "model": model, "seed": recipe.get("seed"), "width": image.width,
                         "height": image.height, "recipe": recipe})
        return rows

    def _run_generate(self, config, progress: Progress):
        from ..generation import generate

        pipe = self.cache.pipeline(config.model)
        preview = self.cache.preview(config.model, pipe)  # no decoder pass: see `previews`
        steps = config.steps or pipe.default_steps
        every = max(1, steps // 8)  # about eight previews a run, whatever the step count
        last_preview = [-PREVIEW_MIN_SECONDS]

        def callback(i, sigma, x, denoised):
            done = i + 1
            previews = None
            if done % every == 0 and done < steps and \
                    time.monotonic() - last_preview[0] >= PREVIEW_MIN_SECONDS:
                last_preview[0] = time.monotonic()
                with progress.timed("preview_decode_s"):
                    previews = preview(denoised)
            progress(done, steps, sigma=float(sigma.max()) if hasattr(sigma, "max")
                     else float(sigma), previews=previews)

        progress(0, steps, phase="loading")
        with progress.timed("generate_s"):
            result = generate(config, pipe=pipe, callback=callback, resolve_image=self.resolve)
        progress(steps, steps, phase="saving")
        with progress.timed("store_images_s"):
            rows = self._store_images(result.images, result.recipes, config.model)
        return {"images": [row["id"] for row in rows]}, rows

    def _run_dream(self, config, progress: Progress):
        from dataclasses import replace

        from ..guided.loop import dream

        def resolve_prompt(reference: str) -> str:
            match = WEIGHTED_REFERENCE.match(reference)
            weight = match.group(3) or ""
            return str(self.resolve(f"{match.group(1)}:{match.group(2)}", "image_prompts")) + weight

        config = replace(config, init_image=str(self.resolve(config.init_image, "init_image"))
                         if config.init_image else None,
                         image_prompts=tuple(resolve_prompt(r) for r in config.image_prompts))
        scorer = self.cache.scorer(config.scorer)
        diffusion = self.cache.pipeline(config.diffusion_model) \
            if config.drawer == "diffusion-latent" and config.diffusion_model else None
        latest: dict = {}

        def on_step(step, image, loss):
            progress(step, config.steps, extra={"loss": round(loss, 5), **latest})

        def on_frame(step, frame):
            progress(step, config.steps, previews=[frame])

        progress(0, config.steps, phase="loading")
        result = dream(config, scorer=scorer, diffusion=diffusion, on_step=on_step,
                       on_frame=on_frame)
        rows = self._store_images([result.image], [result.recipe], config.scorer)
        scores = {"initial": result.history[0], "final": result.history[-1],
                  "adversarial": result.adversarial}
        return {"images": [rows[0]["id"]], "scores": scores}, rows

    def _run_classify(self, config, progress: Progress):
        from ..apps import classify_images

        scorer = self.cache.scorer(config.model)
        paths = [str(self.resolve(r, f"images[{i}]")) for i, r in enumerate(config.images)]
        progress(0, 1, phase="classifying")
        results = classify_images(scorer, paths, config.labels, list(config.templates),
                                  top_k=config.top)
        rows = []
        for reference, result in zip(config.images, results):
            entry = result.to_dict()
            entry["image"] = reference  # the reference the client sent, not a server path
            rows.append(entry)
        return {"model": scorer.name, "results": rows}, []

    def _run_search(self, config, progress: Progress):
        from ..apps import SearchIndex

        index_path = self.store.root / "search-index.sqlite"
        progress(0, 2, phase="indexing")
        with SearchIndex(index_path, create=True) as index:
            spec = index.model_spec or config.model
            scorer = self.cache.scorer(spec)
            index.update(self.store.root / "images", scorer, spec or scorer.name)
            progress(1, 2, phase="searching")
            if config.image is not None:
                hits = index.search_image(scorer, self.resolve(config.image, "image"),
                                          top_k=config.top)
            else:
                hits = index.search_text(scorer, config.query, top_k=config.top)
        results = []
        for hit in hits:
            image = self.store.image(Path(hit.path).stem)
            if image is not None:
                results.append({"rank": len(results) + 1, "score": hit.score,
                                "image": image["id"], "prompt": image["prompt"]})
        return {"model": spec or scorer.name, "results": results}, []

    def _run_evaluate(self, config, progress: Progress):
        from ..metrics.evaluate import EvaluateConfig, evaluate_folders

        work = self.store.root / "tmp" / f"evaluate-{new_id()}"
        try:
            folders = {}
            for name in ("generated", "reference"):
                folder = work / name
                folder.mkdir(parents=True)
                for i, reference in enumerate(getattr(config, name)):
                    source = self.resolve(reference, f"{name}[{i}]")
                    shutil.copyfile(source, folder / f"{i:05d}{source.suffix}")
                folders[name] = str(folder)
            evaluate_config = EvaluateConfig(
                generated_dir=folders["generated"], reference_dir=folders["reference"],
                metrics=config.metric_names(), extractor=config.extractor,
                kid_subsets=config.kid_subsets, kid_subset_size=config.kid_subset_size,
                seed=config.seed, batch_size=config.batch_size, use_cache=False)

            def on_progress(label, done, total):
                progress(done, max(total, 1), phase=f"features: {label}")

            report = evaluate_folders(evaluate_config, on_progress=on_progress)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report = {k: v for k, v in report.items() if not k.endswith(("_dir", "_path"))}
        return report, []

    def _run_reproduce(self, config, progress: Progress):
        from ..generation import reproduce_image

        path = self.resolve(config.image, "image")
        init = self.resolve(config.init_image, "init_image") if config.init_image else None
        mask = self.resolve(config.mask, "mask") if config.mask else None
        controls = [self.resolve(r, f"control_image[{i}]")
                    for i, r in enumerate(config.control_image)]
        progress(0, 1, phase="regenerating")
        warnings: list[str] = []
        try:
            report = reproduce_image(path, init_image=init, mask=mask,
                                     pipe_loader=self.cache.pipeline,
                                     on_warning=warnings.append, control_images=controls)
        except ImageSynthError as exc:  # the library names the CLI's flags; a job has fields
            if exc.field in ("--init-image", "--mask", "--control-image"):
                exc.field = exc.field[2:].replace("-", "_")
                exc.fix = exc.fix or f"pass {exc.field} (upload:ID) in the reproduce request"
                for flag in ("--init-image", "--mask", "--control-image"):
                    name = flag[2:].replace("-", "_")
                    exc.message, exc.fix = (exc.message.replace(flag, name),
                                            exc.fix.replace(flag, name))
            raise
        return {**report.to_dict(), "warnings": warnings, "image": config.image}, []


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when the server dies, so no orphan keeps running jobs."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def serve_forever(data_dir: Path, parent_pid: int, max_model_bytes: int,
                  poll_seconds: float = 0.05) -> None:
    """Hold the worker lock and run jobs until the parent goes away or SIGTERM arrives."""
    _die_with_parent(parent_pid)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    lock = open(data_dir / "worker.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one worker per data folder, ever
    store = Store(data_dir)
    runner = Runner(store, ModelCache(max_model_bytes), lambda: stop["now"])
    while not stop["now"] and os.getppid() == parent_pid:
        job = store.claim_next(os.getpid())
        if job is None:
            time.sleep(poll_seconds)
            continue
        runner.run(job)
    store.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m imagesynth.serve.worker --data-dir DIR --parent PID`."""
    parser = argparse.ArgumentParser(prog="imagesynth-worker")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--parent", required=True, type=int)
    parser.add_argument("--model-memory-mb", type=int, default=4096)
    args = parser.parse_args(argv)
    serve_forever(args.data_dir, args.parent, args.model_memory_mb * 1024 * 1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
