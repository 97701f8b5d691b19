"""An AUTOMATIC1111-compatible shim (`/sdapi/v1/...`), so existing A1111 clients and scripts work.

A request becomes an ordinary `generate` job on the durable queue; the call waits for it and
answers as A1111 does: base64 PNGs, the request as `parameters`, and `info` (a JSON string)
whose `seed`/`all_seeds` regenerate the images. Fields A1111 has and imagesynth does not
(hires fix, face restoration, styles...) are accepted and listed in `info.ignored_fields`;
unset fields take the model's defaults, not A1111's (A1111's CFG 7 suits Stable Diffusion, not
the bundled models).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time

from fastapi import Request

from ..io.sampler_names import IMAGESYNTH_TO_A1111, to_imagesynth

WAIT_SECONDS = 900.0
#: A1111 fields the shim reads; every other key is reported back as ignored
_USED = {"prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler_name",
         "sampler_index", "width", "height", "batch_size", "n_iter", "override_settings",
         "init_images", "denoising_strength", "mask", "mask_blur", "inpainting_mask_invert",
         "scheduler", "send_images", "save_images"}
_DEFAULTISH = {"styles": [], "restore_faces": False, "tiling": False, "enable_hr": False,
               "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": -1,
               "seed_resize_from_w": -1, "eta": None, "s_churn": 0, "s_tmax": 0,
               "s_tmin": 0, "s_noise": 1, "do_not_save_samples": False,
               "do_not_save_grid": False, "override_settings_restore_afterwards": True,
               "script_args": [], "alwayson_scripts": {}, "script_name": None,
               "include_init_images": False, "resize_mode": 0, "inpainting_fill": 0,
               "inpaint_full_res": True, "inpaint_full_res_padding": 0,
               "initial_noise_multiplier": None, "image_cfg_scale": None, "refiner_checkpoint":
               None, "refiner_switch_at": None, "disable_extra_networks": False,
               "comments": {}, "firstphase_width": 0, "firstphase_height": 0,
               "hr_scale": 2, "hr_upscaler": None, "hr_second_pass_steps": 0,
               "hr_resize_x": 0, "hr_resize_y": 0, "denoising_strength": None,
               "infotext": None, "force_task_id": None, "sampler_index": None,
               "latent_mask": None}


def _number(body: dict, field: str, default, *, integer: bool = True):
    """A numeric field of the body (None or absent: `default`); anything else is a 422."""
    from .app import ApiError

    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and value != int(value)):
        raise ApiError(422, field, f"must be {'an integer' if integer else 'a number'}, "
                                   f"got {value!r}")
    return int(value) if integer else float(value)


def _model_name(body: dict, default: str) -> str:
    """override_settings.sd_model_checkpoint ("name [hash]" as A1111 titles it) or the default."""
    from .app import ApiError

    overrides = body.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise ApiError(422, "override_settings", "must be an object")
    checkpoint = overrides.get("sd_model_checkpoint")
    if not checkpoint:
        return default
    return str(checkpoint).split(" [", 1)[0].strip()


def _ignored(body: dict) -> list[str]:
    """Keys set to something other than A1111's default that the shim cannot honour.

    Settings A1111 itself does not apply are not listed: the hires-fix ones (and txt2img's
    denoising_strength) while `enable_hr` is off, and seed resizing at sizes <= 0.
    """
    def inert(key: str, value) -> bool:
        if not body.get("enable_hr") and (key.startswith(("hr_", "firstphase_"))
                                          or key == "denoising_strength"):
            return True
        return key.startswith("seed_resize_from_") and isinstance(value, (int, float)) \
            and value <= 0

    return sorted(key for key, value in body.items()
                  if key not in _USED and _DEFAULTISH.get(key, object()) != value
                  and value not in (None, "", [], {}) and not inert(key, value))


def _config(body: dict, studio, *, init_ref: str | None = None,
            mask_ref: str | None = None) -> dict:
    from .app import ApiError

    model = _model_name(body, studio.settings.default_model)
    about = next((m for m in studio.models() if m["name"] == model), {})
    size = about.get("image_size")
    any_size = about.get("kind") == "stable-diffusion"  # any multiple of 8, checked by the job
    for field in ("width", "height"):
        value = body.get(field)
        if value is not None and size is not None and value != size and not any_size:
            raise ApiError(422, field, f"{value} is not a size model {model!r} generates",
                           f"send {field}={size} (its training size) or leave it out")
    sampler = body.get("sampler_name") or body.get("sampler_index")
    ours = to_imagesynth(str(sampler)) if sampler else None
    if sampler and ours is None:
        raise ApiError(422, "sampler_name", f"unknown sampler {sampler!r}",
                       "see GET /sdapi/v1/samplers")
    seed = _number(body, "seed", -1)
    if seed == -1:
        seed = secrets.randbits(31)  # A1111's "random": chosen here and returned in info
    count = (_number(body, "batch_size", 1) or 1) * (_number(body, "n_iter", 1) or 1)
    config = {"prompt": body.get("prompt", ""), "negative": body.get("negative_prompt", "") or "",
              "model": model, "seed": seed, "n": count, "steps": body.get("steps"),
              "guidance": body.get("cfg_scale"), "sampler": ours}
    if any_size and (body.get("width") or body.get("height")):
        config["width"] = body.get("width") or size
        config["height"] = body.get("height") or size
    if init_ref is not None:
        config["init_image"] = init_ref
        if mask_ref is not None:
            config["mask"] = mask_ref
            config["mask_blur"] = _number(body, "mask_blur", 0.0, integer=False)
        elif body.get("denoising_strength") is not None:
            config["strength"] = body["denoising_strength"]
    return {key: value for key, value in config.items() if value is not None}


async def _run(studio, config: dict, body: dict, request: Request) -> dict:
    from .app import ApiError

    job = await asyncio.to_thread(studio.submit, {"kind": "generate", "config": config})
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        state = studio.store.job(job["id"])
        if state["state"] in ("done", "failed", "cancelled"):
            break
        if await request.is_disconnected() or time.monotonic() > deadline:
            studio.store.request_cancel(job["id"])
            raise ApiError(504, None, "generation did not finish in time")
        await asyncio.sleep(0.05)
    if state["state"] != "done":
        error = state.get("error") or {}
        raise ApiError(422 if error.get("field") else 500, error.get("field"),
                       error.get("message", state["state"]), error.get("fix"))
    images, recipes = [], []
    for image_id in state["result"]["images"]:
        image = studio.store.image(image_id)
        images.append(base64.b64encode(studio.store.image_path(image).read_bytes()).decode())
        recipes.append(image["recipe"])
    return {"images": images if body.get("send_images", True) else [],
            "parameters": body, "info": json.dumps(_info(recipes, body, state["id"]))}


def _info(recipes: list[dict], body: dict, job_id: str) -> dict:
    """A1111's `info` object, from the recipes of the images made."""
    from ..io.pngmeta import a1111_parameters

    first = recipes[0]
    return {"prompt": first["prompt"], "all_prompts": [r["prompt"] for r in recipes],
            "negative_prompt": first.get("negative_prompt", ""),
            "all_negative_prompts": [r.get("negative_prompt", "") for r in recipes],
            "seed": first["seed"], "all_seeds": [r["seed"] for r in recipes],
            "subseed": -1, "all_subseeds": [-1] * len(recipes), "subseed_strength": 0,
            "width": first["size"][0], "height": first["size"][1],
            "sampler_name": IMAGESYNTH_TO_A1111.get(first["sampler"], first["sampler"]),
            "cfg_scale": first["guidance_scale"], "steps": first["steps"],
            "batch_size": int(body.get("batch_size", 1) or 1),
            "restore_faces": False, "sd_model_name": first["model"],
            "sd_model_hash": (first.get("model_hash") or "")[:10],
            "denoising_strength": first.get("strength"), "index_of_first_image": 0,
            "infotexts": [a1111_parameters(r) for r in recipes], "styles": [],
            "job_timestamp": first.get("timestamp", ""), "clip_skip": 1,
            "version": f"imagesynth {first.get('versions', {}).get('imagesynth', '')}",
            "ignored_fields": _ignored(body), "job_id": job_id}


def add_a1111_routes(app, studio) -> None:
    """Register the /sdapi/v1 routes on `app`."""
    from .app import ApiError, decode_base64

    async def body_of(request: Request) -> dict:
        try:
            body = json.loads(await request.body() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(422, "body", "is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(422, "body", "must be a JSON object")
        return body

    @app.post("/sdapi/v1/txt2img", tags=["a1111"])
    async def txt2img(request: Request):
        """A1111 text-to-image."""
        body = await body_of(request)
        return await _run(studio, _config(body, studio), body, request)

    @app.post("/sdapi/v1/img2img", tags=["a1111"])
    async def img2img(request: Request):
        """A1111 image-to-image and inpainting (init_images[0], mask)."""
        body = await body_of(request)
        images = body.get("init_images") or []
        if not images:
            raise ApiError(422, "init_images", "needs one base64 image")
        init = await asyncio.to_thread(studio.save_upload,
                                       decode_base64(images[0], "init_images[0]"))
        mask_ref = None
        if body.get("mask"):
            mask_bytes = decode_base64(body["mask"], "mask")
            if body.get("inpainting_mask_invert"):
                mask_bytes = await asyncio.to_thread(_invert, mask_bytes)
            mask_ref = (await asyncio.to_thread(studio.save_upload, mask_bytes))["ref"]
        config = _config(body, studio, init_ref=init["ref"], mask_ref=mask_ref)
        return await _run(studio, config, body, request)

    @app.get("/sdapi/v1/sd-models", tags=["a1111"])
    async def sd_models():
        """Diffusion models, in A1111's shape (filename is the name: no path is exposed)."""
        return [{"title": f"{m['name']} [{(m['sha256'] or '')[:10]}]", "model_name": m["name"],
                 "hash": (m["sha256"] or "")[:10], "sha256": m["sha256"], "filename": m["name"],
                 "config": None} for m in studio.models() if m["family"] == "diffusion"]

    @app.get("/sdapi/v1/samplers", tags=["a1111"])
    async def samplers():
        """The samplers, under A1111's names."""
        return [{"name": name, "aliases": [ours], "options": {"scheduler": "karras"}}
                for ours, name in IMAGESYNTH_TO_A1111.items()]

    @app.get("/sdapi/v1/options", tags=["a1111"])
    async def options():
        """The one option clients read: the current checkpoint."""
        return {"sd_model_checkpoint": studio.settings.default_model}

    @app.get("/sdapi/v1/progress", tags=["a1111"])
    async def progress():
        """A1111's progress poll: the running job's step and ETA."""
        running = studio.store.jobs(limit=1, states=("running",))
        queued = studio.store.counts().get("queued", 0)
        if not running:
            return {"progress": 0.0, "eta_relative": 0.0, "current_image": None,
                    "state": {"job_count": queued, "sampling_step": 0, "sampling_steps": 0,
                              "interrupted": False}}
        job = studio.store.job(running[0]["id"])
        step = (job.get("progress") or {}).get("step", 0)
        total = (job.get("progress") or {}).get("total", 0) or 1
        return {"progress": step / total, "eta_relative": (job.get("progress") or {}).get(
                    "eta_s") or 0.0, "current_image": None,
                "state": {"job_count": queued + 1, "sampling_step": step,
                          "sampling_steps": total, "interrupted": job["cancel_requested"],
                          "job": job["id"]}}


def _invert(data: bytes) -> bytes:
    import io

    from PIL import ImageOps

    from ..io.images import open_image

    buffer = io.BytesIO()
    ImageOps.invert(open_image(data, mode="L", field="mask")).save(buffer, format="PNG")
    return buffer.getvalue()
