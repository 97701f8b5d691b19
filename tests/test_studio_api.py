"""The studio's HTTP API against the real server: jobs, gallery, trash, uploads, reproduce, A1111.

Every test talks to `imagesynth serve` in a subprocess on a free loopback port (see
`studio_support`), with the tiny 16 px model registered as `tiny` (and again as `tiny-b`, so the
gallery's model filter has two models to tell apart). Loops are bounded; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from studio_support import StudioProcess, b64, pixels, png_bytes

SIZE = 16  # the tiny model's side


@pytest.fixture(scope="module")
def studio(studio_model, tmp_path_factory):
    """The studio with `tiny` and `tiny-b` (the same weights under a second name)."""
    from imagesynth.registry import Registry

    Registry().add(studio_model, name="tiny-b")
    server = StudioProcess(tmp_path_factory.mktemp("studio") / "data").start()
    yield server
    server.stop()


def _random_png(seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    array = rng.integers(0, 256, size=(SIZE, SIZE, channels), dtype=np.uint8)
    return png_bytes(Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode))


def _upload(studio, data: bytes) -> dict:
    response = studio.post("/api/uploads", {"data": b64(data)})
    assert response.status_code == 201, response.text
    return response.json()


def _generate(studio, **config) -> dict:
    job = studio.wait(studio.submit("generate", {"model": "tiny", "steps": 4, **config}))
    assert job["state"] == "done", job
    return job


def _image_files(studio) -> set[str]:
    return {p.name for p in (studio.data_dir / "images").iterdir()}


def test_a_generate_job_runs_and_its_images_land_in_the_gallery(studio):
    job_id = studio.submit("generate", {"prompt": "a red circle", "model": "tiny", "n": 2,
                                        "steps": 4, "seed": 3})
    job = studio.wait(job_id)
    assert job["state"] == "done", job
    images = job["result"]["images"]
    assert len(images) == 2
    history = studio.get("/api/history").json()
    assert {i["id"] for i in history["images"]} >= set(images)
    png = studio.get(f"/api/images/{images[0]}")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-content-type-options"] == "nosniff"
    recipe = studio.get(f"/api/images/{images[1]}/recipe").json()["recipe"]
    assert recipe["seed"] == 4 and recipe["prompt"] == "a red circle"


def test_job_lifecycle_202_location_state_progress(studio):
    response = studio.post("/api/jobs", {"kind": "generate", "config": {
        "prompt": "a green triangle", "model": "tiny", "steps": 6, "seed": 11}})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["state"] == "queued" and body["kind"] == "generate"
    assert response.headers["location"] == f"/api/jobs/{body['id']}"
    first = studio.get(response.headers["location"]).json()
    assert first["id"] == body["id"] and first["state"] in ("queued", "running", "done")
    job = studio.wait(body["id"])
    assert job["state"] == "done" and job["attempts"] == 1 and job["error"] is None
    assert job["progress"]["step"] == job["progress"]["total"] == 6
    assert job["started"] >= job["created"] and job["finished"] >= job["started"]
    assert job["config"]["seed"] == 11 and job["config"]["prompt"] == "a green triangle"
    listed = studio.get("/api/jobs?limit=500").json()
    assert body["id"] in {j["id"] for j in listed["jobs"]}
    assert listed["queue"]["done"] >= 1


@pytest.mark.parametrize("job_id", [secrets.token_hex(16), secrets.token_hex(16).upper(),
                                    "not-a-job", secrets.token_hex(15), secrets.token_hex(17),
                                    "0" * 32])
def test_unknown_or_malformed_job_ids_are_404_never_done(studio, job_id):
    for response in (studio.get(f"/api/jobs/{job_id}"),
                     studio.get(f"/api/jobs/{job_id}/events"),
                     studio.post(f"/api/jobs/{job_id}/cancel")):
        assert response.status_code == 404, (response.request.url, response.text)
        assert "done" not in response.text
        assert response.json()["error"]["field"] == "id"


@pytest.mark.parametrize("image_id", [secrets.token_hex(16), "xyz", "0" * 31])
def test_unknown_image_and_upload_ids_are_404(studio, image_id):
    responses = [studio.get(f"/api/images/{image_id}"),
                 studio.get(f"/api/images/{image_id}/thumb"),
                 studio.get(f"/api/images/{image_id}/recipe"),
                 studio.post(f"/api/images/{image_id}/reproduce"),
                 studio.post(f"/api/images/{image_id}/restore"),
                 studio.delete(f"/api/images/{image_id}"),
                 studio.get(f"/api/uploads/{image_id}")]
    assert [r.status_code for r in responses] == [404] * len(responses)


def test_event_stream_yields_progress_then_one_end(studio):
    job_id = studio.submit("generate", {"prompt": "a blue circle", "model": "tiny",
                                        "steps": 24, "seed": 5})
    events = studio.events(job_id)
    names = [name for name, _ in events]
    assert names[-1] == "end" and names.count("end") == 1
    assert names[:-1] and set(names[:-1]) == {"progress"}
    steps = [data["progress"]["step"] for name, data in events
             if name == "progress" and data.get("progress") and
             data["progress"].get("phase") == "sampling"]
    assert steps and steps == sorted(steps) and max(steps) <= 24
    end = events[-1][1]
    assert end["id"] == job_id and end["state"] == "done" and len(end["result"]["images"]) == 1
    # about eight previews a run, as data URLs of PNGs
    previews = [p for _, data in events for p in (data.get("progress") or {}).get("previews", [])]
    assert all(p.startswith("data:image/png;base64,") for p in previews)
    # the stream of a finished job is its `end` at once
    assert [name for name, _ in studio.events(job_id)] == ["end"]


def test_cancel_a_queued_and_a_running_job_leaves_no_images(studio):
    before = _image_files(studio)
    running = studio.submit("generate", {"prompt": "a long one", "model": "tiny",
                                         "steps": 1000, "seed": 1})
    queued = studio.submit("generate", {"prompt": "never runs", "model": "tiny", "steps": 4})
    studio.wait_state(running, lambda j: j["state"] == "running"
                      and (j["progress"] or {}).get("step", 0) >= 1, timeout=120)
    response = studio.post(f"/api/jobs/{queued}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert studio.get(f"/api/jobs/{queued}").json()["state"] == "cancelled"
    response = studio.post(f"/api/jobs/{running}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "running"
    job = studio.wait(running, timeout=60)
    assert job["state"] == "cancelled" and job["cancel_requested"], job
    assert job["progress"]["step"] < 1000
    assert studio.get(f"/api/jobs/{queued}").json()["attempts"] == 0  # it never started
    for trashed in ("false", "true"):
        images = studio.get(f"/api/history?limit=500&trashed={trashed}").json()["images"]
        assert not {i["job_id"] for i in images} & {running, queued}
    assert _image_files(studio) == before
    # cancelling a finished job changes nothing
    assert studio.post(f"/api/jobs/{running}/cancel").json()["state"] == "cancelled"


def test_gallery_filters_by_prompt_text_and_model(studio):
    blue = _generate(studio, prompt="a filterable blue square", model="tiny-b", seed=1)
    red = _generate(studio, prompt="a filterable red circle", seed=2)
    found = studio.get("/api/history", params={"q": "filterable blue"}).json()
    assert {i["id"] for i in found["images"]} == set(blue["result"]["images"])
    assert found["total"] == 1 and "file" not in found["images"][0]
    found = studio.get("/api/history", params={"q": "FILTERABLE"}).json()  # case-insensitive
    assert {i["id"] for i in found["images"]} == set(blue["result"]["images"]) | set(
        red["result"]["images"])
    by_model = studio.get("/api/history", params={"model": "tiny-b", "limit": 500}).json()
    assert {i["id"] for i in by_model["images"]} == set(blue["result"]["images"])
    assert {i["model"] for i in by_model["images"]} == {"tiny-b"}
    assert {"tiny", "tiny-b"} <= set(by_model["models"])
    both = studio.get("/api/history", params={"q": "filterable", "model": "tiny"}).json()
    assert {i["id"] for i in both["images"]} == set(red["result"]["images"])
    for pattern in ("%", "_", "\\"):  # LIKE wildcards are literal text
        assert studio.get("/api/history", params={"q": pattern}).json()["total"] == 0


def test_trash_delete_restore_and_empty(studio):
    job = _generate(studio, prompt="trash me", seed=9)
    image_id = job["result"]["images"][0]
    in_gallery = lambda: image_id in {i["id"] for i in studio.get(  # noqa: E731
        "/api/history?limit=500").json()["images"]}
    in_trash = lambda: image_id in {i["id"] for i in studio.get(  # noqa: E731
        "/api/history?limit=500&trashed=true").json()["images"]}
    assert in_gallery() and not in_trash()
    response = studio.delete(f"/api/images/{image_id}")
    assert response.status_code == 200 and response.json() == {"id": image_id, "trashed": True}
    assert not in_gallery() and in_trash()
    assert studio.delete(f"/api/images/{image_id}").status_code == 404  # already trashed
    assert studio.post(f"/api/images/{image_id}/restore").status_code == 200
    assert in_gallery() and not in_trash()
    assert studio.post(f"/api/images/{image_id}/restore").status_code == 404  # not in the trash
    assert studio.get(f"/api/images/{image_id}").status_code == 200
    assert studio.delete(f"/api/images/{image_id}").status_code == 200
    name = f"{image_id}.png"
    assert (studio.data_dir / "trash" / name).is_file()
    assert not (studio.data_dir / "images" / name).exists()
    response = studio.post("/api/trash/empty")
    assert response.status_code == 200 and response.json()["deleted"] >= 1
    assert not (studio.data_dir / "trash" / name).exists()
    assert not (studio.data_dir / "thumbs" / name).exists()
    assert not in_gallery() and not in_trash()
    for path in ("", "/thumb", "/recipe"):
        assert studio.get(f"/api/images/{image_id}{path}").status_code == 404


def test_upload_round_trip_and_img2img_reproduces(studio):
    data = _random_png(0)
    upload = _upload(studio, data)
    assert upload["ref"] == f"upload:{upload['id']}"
    assert (upload["width"], upload["height"]) == (SIZE, SIZE)
    served = studio.get(f"/api/uploads/{upload['id']}")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert pixels(served.content) == pixels(data)
    job = _generate(studio, prompt="a red circle", init_image=upload["ref"], strength=0.5,
                    seed=4)
    image_id = job["result"]["images"][0]
    recipe = studio.get(f"/api/images/{image_id}/recipe").json()["recipe"]
    assert recipe["init_image_hash"] and recipe["strength"] == 0.5
    assert job["config"]["init_image"] == upload["ref"]
    # reproduce needs the init image again; with it, the pixels come back identical
    response = studio.post(f"/api/images/{image_id}/reproduce",
                           {"init_image": upload["ref"]})
    assert response.status_code == 202, response.text
    reproduced = studio.wait(response.json()["id"])
    assert reproduced["state"] == "done", reproduced
    assert reproduced["result"]["identical"] is True
    assert reproduced["result"]["pixels_differ"] == 0
    without = studio.wait(studio.post(f"/api/images/{image_id}/reproduce").json()["id"])
    assert without["state"] == "failed" and without["error"]["field"] == "init_image"


def test_inpainting_with_a_mask_and_outpainting_borders(studio):
    init = _upload(studio, _random_png(1))
    mask_array = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask_array[:, SIZE // 2:] = 255
    mask = _upload(studio, png_bytes(Image.fromarray(mask_array, "L")))
    job = _generate(studio, prompt="a yellow circle", init_image=init["ref"], mask=mask["ref"],
                    seed=6)
    recipe = studio.get(f"/api/images/{job['result']['images'][0]}/recipe").json()["recipe"]
    assert recipe["mask_hash"] and recipe["init_image_hash"]
    painted = np.asarray(Image.open(__import__("io").BytesIO(
        studio.get(f"/api/images/{job['result']['images'][0]}").content)).convert("RGB"))
    original = np.asarray(Image.open(__import__("io").BytesIO(_random_png(1))).convert("RGB"))
    # the unmasked half keeps the init image (up to the sampler's final re-blend)
    left = np.abs(painted[:, : SIZE // 2 - 1].astype(int) - original[:, : SIZE // 2 - 1]).mean()
    right = np.abs(painted[:, SIZE // 2 + 1:].astype(int) - original[:, SIZE // 2 + 1:]).mean()
    assert left < right
    job = _generate(studio, prompt="a yellow circle", init_image=init["ref"],
                    outpaint=[4, 0, 4, 0], seed=7)
    recipe = studio.get(f"/api/images/{job['result']['images'][0]}/recipe").json()["recipe"]
    assert recipe["outpaint"] == [4, 0, 4, 0] and recipe["size"] == [SIZE, SIZE]
    # a mask of another size fails the job with the field named
    small = _upload(studio, png_bytes(Image.new("L", (8, 8), 255)))
    failed = studio.wait(studio.submit("generate", {
        "prompt": "x", "model": "tiny", "steps": 2, "init_image": init["ref"],
        "mask": small["ref"]}))
    assert failed["state"] == "failed" and failed["error"]["field"] == "mask"


@pytest.mark.parametrize("config, field", [
    ({"prompt": "x", "model": "tiny", "init_image": "/etc/passwd"}, "init_image"),
    ({"prompt": "x", "model": "tiny", "init_image": "upload:" + "a" * 32}, "init_image"),
    ({"prompt": "x", "model": "/tmp"}, "model"),
    ({"prompt": "x", "model": "tiny", "steps": 0}, "steps"),
    ({"prompt": "x", "model": "tiny", "outpaint": [4, 0, 4, 0]}, "outpaint"),
    ({"prompt": "", "model": "tiny"}, "prompt"),
])
def test_invalid_jobs_are_422_naming_the_field(studio, config, field):
    response = studio.post("/api/jobs", {"kind": "generate", "config": config})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def _layout_map(side: int = 32) -> bytes:
    """A drawn layout map: the prompt's first object (red code) left, its second (green) right."""
    from PIL import ImageDraw

    from imagesynth.data.conditions import LAYOUT_CODES

    image = Image.new("RGB", (side, side))
    draw = ImageDraw.Draw(image)
    draw.ellipse((2, 9, 14, 21), fill=LAYOUT_CODES[0])
    draw.rectangle((18, 9, 29, 20), fill=LAYOUT_CODES[1])
    return png_bytes(image)


def test_a_controlnet_job_on_shapes_records_the_map_and_reproduces(studio):
    """The bundled layout ControlNet on the bundled 32 px `shapes` model, map uploaded."""
    import hashlib

    layout = _layout_map()
    upload = _upload(studio, layout)
    base = {"prompt": "a red circle to the left of a blue square", "model": "shapes",
            "steps": 4, "seed": 21}
    controlled = _generate(studio, **base, control_image=[upload["ref"]],
                           control_model=["shapes-control"], control_scale=[1.0],
                           control_start=[0.0], control_end=[1.0])
    plain = _generate(studio, **base)
    image_id = controlled["result"]["images"][0]
    recipe = studio.get(f"/api/images/{image_id}/recipe").json()["recipe"]
    [entry] = recipe["controls"]
    shapes = {m["name"]: m for m in studio.get("/api/models").json()["models"]}
    assert entry["model"] == "shapes-control" and entry["condition"] == "layout"
    assert entry["model_hash"] == shapes["shapes-control"]["sha256"]
    assert (entry["scale"], entry["start"], entry["end"]) == (1.0, 0.0, 1.0)
    rgb = Image.open(__import__("io").BytesIO(layout)).convert("RGB").tobytes()
    assert entry["image_hash"] == hashlib.sha256(rgb).hexdigest()
    assert controlled["config"]["control_image"] == [upload["ref"]]
    assert "controls" not in studio.get(
        f"/api/images/{plain['result']['images'][0]}/recipe").json()["recipe"]
    # the map steers: same prompt and seed, other pixels
    assert pixels(studio.get(f"/api/images/{image_id}").content) != pixels(
        studio.get(f"/api/images/{plain['result']['images'][0]}").content)
    # reproduce takes the map like the CLI's --control-image; without it, the field is named
    response = studio.post(f"/api/images/{image_id}/reproduce",
                           {"control_image": [upload["ref"]]})
    assert response.status_code == 202, response.text
    reproduced = studio.wait(response.json()["id"])
    assert reproduced["state"] == "done" and reproduced["result"]["identical"] is True, reproduced
    without = studio.wait(studio.post(f"/api/images/{image_id}/reproduce").json()["id"])
    assert without["state"] == "failed" and without["error"]["field"] == "control_image"
    assert "--" not in without["error"]["message"] + (without["error"]["fix"] or "")


def test_models_list_the_controlnet_with_its_condition_and_base(studio):
    models = {m["name"]: m for m in studio.get("/api/models").json()["models"]}
    control = models["shapes-control"]
    assert control["family"] == "controlnet" and control["condition"] == "layout"
    assert control["base_sha256"] == models["shapes"]["sha256"]
    fields = {f["name"]: f for f in studio.get("/api/schema").json()["kinds"]["generate"][
        "fields"]}
    assert fields["control_image"]["kind"] == "images"
    assert fields["control_model"]["kind"] == fields["clip_model"]["kind"] == "model"
    assert fields["control_model"]["families"][0] == "controlnet"
    assert fields["clip_model"]["families"] == ["clip"]


MAP = "upload:" + "b" * 32  # well-formed, but no such upload


@pytest.mark.parametrize("extra, field", [
    ({"control_image": ["MAP"], "control_model": ["/opt/models/shapes-control"]},
     "control_model[0]"),
    ({"control_image": ["MAP"], "control_model": ["../shapes-control"]}, "control_model[0]"),
    ({"control_image": ["MAP"], "control_model": ["shapes"]}, "control_model[0]"),
    ({"control_image": ["MAP"], "control_model": ["shapes-clip"]}, "control_model[0]"),
    ({"control_image": ["/etc/hosts"], "control_model": ["shapes-control"]}, "control_image[0]"),
    ({"control_image": ["layout.png"], "control_model": ["shapes-control"]}, "control_image[0]"),
    ({"control_image": [MAP], "control_model": ["shapes-control"]}, "control_image[0]"),
    ({"control_model": ["shapes-control"]}, "control_model"),
    ({"clip_guidance": 1.0, "clip_model": "/tmp/clip"}, "clip_model"),
    ({"clip_guidance": 1.0, "clip_model": "hf:/tmp/clip"}, "clip_model"),
    ({"clip_guidance": 1.0, "clip_model": "shapes"}, "clip_model"),
    ({"lora": ["style.safetensors"]}, "lora"),
])
def test_controlnet_and_clip_fields_take_references_and_model_names_only(studio, extra, field):
    if extra.get("control_image") == ["MAP"]:  # a real upload, so only the model is at fault
        extra = {**extra, "control_image": [_upload(studio, _layout_map())["ref"]]}
    response = studio.post("/api/jobs", {"kind": "generate", "config": {
        "prompt": "a red circle", "model": "shapes", "steps": 2, **extra}})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and "\n" not in error["message"] and error["fix"]


def test_a_controlnet_for_other_weights_is_422_before_queueing(studio):
    """`shapes-control` is tied to the `shapes` weights by hash: on `tiny` it is refused now."""
    before = studio.get("/api/jobs?limit=500").json()["queue"]
    response = studio.post("/api/jobs", {"kind": "generate", "config": {
        "prompt": "a red circle", "model": "tiny", "control_image": [
            _upload(studio, _random_png(3))["ref"]], "control_model": ["shapes-control"]}})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "control_model[0]"
    assert "shapes" in error["message"] and "tiny" in error["message"]
    assert studio.get("/api/jobs?limit=500").json()["queue"] == before


def _reproduce_all(studio, job: dict) -> None:
    for image_id in job["result"]["images"]:
        response = studio.post(f"/api/images/{image_id}/reproduce")
        assert response.status_code == 202
        result = studio.wait(response.json()["id"])
        assert result["state"] == "done", result
        assert result["result"]["identical"] is True and result["result"]["image"] == \
            f"image:{image_id}"


def test_reproduce_job_is_identical(studio):
    _reproduce_all(studio, _generate(studio, prompt="a purple square", seed=12))


def test_reproduce_job_is_identical_for_images_of_a_batch(studio):
    """Each image of a batch is computed as its own call, so regenerating it alone matches."""
    _reproduce_all(studio, _generate(studio, prompt="a purple square", seed=12, n=2))


def test_models_lists_tiny_without_paths(studio, studio_model):
    body = studio.get("/api/models").json()
    names = {m["name"]: m for m in body["models"]}
    assert body["default"] == "tiny"
    tiny = names["tiny"]
    assert tiny["family"] == "diffusion" and tiny["image_size"] == SIZE
    assert tiny["source"] == "user" and len(tiny["sha256"]) == 64
    text = json.dumps(body)
    assert str(studio_model) not in text and str(Path(studio_model).parent) not in text
    assert os.environ["IMAGESYNTH_HOME"] not in text


def test_schema_has_every_generate_field_with_the_cli_defaults(studio):
    import dataclasses

    import typer.main

    from imagesynth.cli import _register, app
    from imagesynth.generation import GenerateConfig

    body = studio.get("/api/schema").json()
    fields = {f["name"]: f for f in body["kinds"]["generate"]["fields"]}
    assert list(fields) == [f.name for f in dataclasses.fields(GenerateConfig)]
    _register()
    command = typer.main.get_command(app).commands["generate"]
    cli = {p.name: p for p in command.params}
    for name, entry in fields.items():
        param = cli[name]
        if param.required:
            assert entry["required"], name
        else:
            assert entry["default"] == param.default, (name, entry["default"], param.default)
        assert entry["help"], name
    assert fields["sampler"]["choices"] == ["euler", "heun", "euler_ancestral", "dpmpp_2m",
                                            "ddpm"]
    assert fields["init_image"]["kind"] == fields["mask"]["kind"] == "image"
    assert fields["model"]["kind"] == "model"
    assert set(body["kinds"]) == {"generate", "dream", "classify", "search", "evaluate",
                                  "reproduce"}
    assert body["default_model"] == "tiny"


def test_metadata_reads_an_a1111_png(studio):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat in a hat\nNegative prompt: blurry\nSteps: 28, "
                  "Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, "
                  "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.6.0")
    buffer = __import__("io").BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, format="PNG", pnginfo=info)
    response = studio.post("/api/metadata", {"data": "data:image/png;base64," +
                                             b64(buffer.getvalue())})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "a1111"
    settings = body["settings"]
    assert settings["prompt"] == "a cat in a hat" and settings["negative_prompt"] == "blurry"
    assert settings["seed"] == 1234567 and settings["steps"] == 28
    assert settings["guidance_scale"] == 6.5 and settings["sampler"] == "dpmpp_2m"
    assert (settings["width"], settings["height"]) == (512, 768)
    assert studio.post("/api/metadata", {"data": b64(b"not an image")}).status_code == 415


# --- the AUTOMATIC1111 shim --------------------------------------------------------------

def webuiapi_txt2img_payload(**overrides) -> dict:
    """The JSON body `webuiapi.WebUIApi().txt2img()` (mix1009/sdwebuiapi) posts by default.

    Field for field its `payload` dict with the method's defaults: the client's default
    sampler "Euler a" and steps 20 filled in, `hr_upscaler` serialised from its enum.
    """
    payload = {
        "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0,
        "hr_resize_x": 0, "hr_resize_y": 0, "denoising_strength": 0.7, "firstphase_width": 0,
        "firstphase_height": 0, "prompt": "", "styles": [], "seed": -1, "subseed": -1,
        "subseed_strength": 0.0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
        "batch_size": 1, "n_iter": 1, "steps": 20, "cfg_scale": 7.0, "width": 512,
        "height": 512, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
        "do_not_save_grid": False, "negative_prompt": "", "eta": 1.0, "s_churn": 0,
        "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
        "override_settings_restore_afterwards": True, "sampler_name": "Euler a",
        "sampler_index": "Euler a", "script_name": None, "script_args": [],
        "send_images": True, "save_images": False, "alwayson_scripts": {},
    }
    return {**payload, **overrides}


def webuiapi_img2img_payload(init: bytes, mask: bytes | None = None, **overrides) -> dict:
    """The JSON body `webuiapi.WebUIApi().img2img(images=[init], mask_image=mask)` posts."""
    payload = {
        "init_images": ["data:image/png;base64," + b64(init)], "resize_mode": 0,
        "denoising_strength": 0.75, "mask_blur": 4, "inpainting_fill": 0,
        "inpaint_full_res": True, "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0,
        "initial_noise_multiplier": 1, "prompt": "", "styles": [], "seed": -1, "subseed": -1,
        "subseed_strength": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
        "batch_size": 1, "n_iter": 1, "steps": 20, "cfg_scale": 7.0, "image_cfg_scale": 1.5,
        "width": 512, "height": 512, "restore_faces": False, "tiling": False,
        "do_not_save_samples": False, "do_not_save_grid": False, "negative_prompt": "",
        "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
        "override_settings": {}, "override_settings_restore_afterwards": True,
        "sampler_name": "Euler a", "sampler_index": "Euler a", "include_init_images": False,
        "script_name": None, "script_args": [], "send_images": True, "save_images": False,
        "alwayson_scripts": {},
    }
    if mask is not None:
        payload["mask"] = "data:image/png;base64," + b64(mask)
    return {**payload, **overrides}


def test_a1111_txt2img_with_a_stock_client_payload_reproduces_from_info(studio):
    payload = webuiapi_txt2img_payload(prompt="a red circle", width=SIZE, height=SIZE)
    response = studio.post("/sdapi/v1/txt2img", payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 1 and body["parameters"] == payload
    info = json.loads(body["info"])
    assert isinstance(info["seed"], int) and info["seed"] >= 0  # seed -1 became a real seed
    assert info["all_seeds"] == [info["seed"]]
    assert info["sampler_name"] == "Euler a" and info["steps"] == 20
    assert info["cfg_scale"] == 7.0 and (info["width"], info["height"]) == (SIZE, SIZE)
    assert info["sd_model_name"] == "tiny"
    assert info["ignored_fields"] == ["eta"]  # the hires and seed-resize defaults are inert
    assert "Seed: " in info["infotexts"][0]
    image = __import__("base64").b64decode(body["images"][0])
    # the same seed through the studio's own API gives the same pixels
    job = _generate(studio, prompt="a red circle", seed=info["seed"], steps=20, guidance=7.0,
                    sampler="euler_ancestral")
    again = studio.get(f"/api/images/{job['result']['images'][0]}").content
    assert pixels(again) == pixels(image)


def test_a1111_seed_minus_one_gets_a_concrete_seed_and_batches_count(studio):
    response = studio.post("/sdapi/v1/txt2img", {"prompt": "a cat", "seed": -1, "steps": 2,
                                                 "batch_size": 2})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert len(response.json()["images"]) == 2
    assert info["all_seeds"] == [info["seed"], info["seed"] + 1] and info["seed"] >= 0


def test_a1111_models_samplers_options_progress(studio):
    models = studio.get("/sdapi/v1/sd-models").json()
    tiny = next(m for m in models if m["model_name"] == "tiny")
    assert tiny["filename"] == "tiny" and tiny["title"].startswith("tiny [")
    assert "/" not in json.dumps(models)
    samplers = {s["name"] for s in studio.get("/sdapi/v1/samplers").json()}
    assert {"Euler", "Euler a", "Heun", "DPM++ 2M", "DDPM"} <= samplers
    assert studio.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny"
    progress = studio.get("/sdapi/v1/progress").json()
    assert 0.0 <= progress["progress"] <= 1.0 and "state" in progress


def test_a1111_img2img_and_inpainting_with_base64_images(studio):
    init = _random_png(2)
    response = studio.post("/sdapi/v1/img2img", webuiapi_img2img_payload(
        init, prompt="a blue square", width=SIZE, height=SIZE, steps=4, seed=21))
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["denoising_strength"] == 0.75 and info["seed"] == 21
    out = Image.open(__import__("io").BytesIO(__import__("base64").b64decode(
        response.json()["images"][0])))
    assert out.size == (SIZE, SIZE)
    mask = png_bytes(Image.new("L", (SIZE, SIZE), 255))
    response = studio.post("/sdapi/v1/img2img", webuiapi_img2img_payload(
        init, mask, prompt="a blue square", width=SIZE, height=SIZE, steps=4, seed=22))
    assert response.status_code == 200, response.text
    job = studio.get(f"/api/jobs/{json.loads(response.json()['info'])['job_id']}").json()
    assert job["config"]["mask"].startswith("upload:") and job["config"]["mask_blur"] == 4.0
    response = studio.post("/sdapi/v1/img2img", {"prompt": "x", "init_images": []})
    assert response.status_code == 422 and response.json()["error"]["field"] == "init_images"


@pytest.mark.parametrize("overrides, field", [
    ({"sampler_name": "DPM++ SDE Karras", "sampler_index": None}, "sampler_name"),
    ({"width": 512}, "width"),
    ({"height": 64}, "height"),
    ({"batch_size": "two"}, "batch_size"),
    ({"seed": 1.5}, "seed"),
    ({"override_settings": ["tiny"]}, "override_settings"),
    ({"override_settings": {"sd_model_checkpoint": "/etc/passwd"}}, "model"),
])
def test_a1111_bad_requests_are_422_naming_the_field(studio, overrides, field):
    payload = webuiapi_txt2img_payload(prompt="x", width=SIZE, height=SIZE, steps=2)
    payload.update(overrides)
    response = studio.post("/sdapi/v1/txt2img", payload)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field
    if field in ("width", "sampler_name"):
        assert field == error["field"] and error["message"]


def test_no_json_response_holds_a_path_or_the_environment(studio, studio_model):
    """Every JSON body this module's tests received, plus a sweep of the GET routes."""
    for path in ("/api/status", "/api/schema", "/api/models", "/api/jobs?limit=500",
                 "/api/history?limit=500", "/api/history?limit=500&trashed=true",
                 "/sdapi/v1/sd-models", "/sdapi/v1/samplers", "/sdapi/v1/options",
                 "/sdapi/v1/progress", "/openapi.json"):
        assert studio.get(path).status_code == 200, path
    jobs = studio.get("/api/jobs?limit=500").json()["jobs"]
    for job in jobs:
        studio.get(f"/api/jobs/{job['id']}")
        for image_id in (job.get("result") or {}).get("images", []):
            studio.get(f"/api/images/{image_id}/recipe")
    forbidden = {str(studio.data_dir), str(studio.data_dir.resolve()), str(Path.home()),
                 os.environ["IMAGESYNTH_HOME"], str(studio_model), str(Path.cwd())}
    forbidden = {f for f in forbidden if len(f) > 1}
    assert len(studio.json_seen) > 50
    for text in studio.json_seen:
        for secret in forbidden:
            assert secret not in text, (secret, text[:300])
        assert os.environ.get("PATH", "#none#") not in text
