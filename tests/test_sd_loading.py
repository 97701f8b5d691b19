"""Registering and loading users' Stable Diffusion weights: folders, single files, trusted pickles."""

from __future__ import annotations

import shutil

import pytest
import torch

from sd_tiny import save_tiny_folder

from imagesynth.errors import ConfigError, ImageSynthError
from imagesynth.io.files import sha256_file
from imagesynth.pipeline import load_pipeline
from imagesynth.registry import Registry
from imagesynth.sd.single_file import save_single_file


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory):
    return save_tiny_folder(tmp_path_factory.mktemp("sd") / "tiny-sd1", "sd1")


def samples(pipe, seed=2):
    return pipe("a red circle", seed=seed, num_steps=3, size=64).samples


def test_a_single_file_with_its_config_folder_matches_the_folder(sd1_folder, tmp_path):
    file = save_single_file(sd1_folder, tmp_path / "tiny-sd1.safetensors") or \
        tmp_path / "tiny-sd1.safetensors"
    entry = Registry().add(file, name="tiny-file", config=sd1_folder)
    assert entry.family == "stable-diffusion" and entry.details["layout"] == "single_file"
    assert entry.weights_sha256 == sha256_file(file)  # a single file is pinned by its own hash
    from_file = load_pipeline("tiny-file", device="cpu")
    from_folder = load_pipeline(str(sd1_folder), device="cpu")
    assert (samples(from_file) - samples(from_folder)).abs().max() < 1e-5
    assert from_file("a red circle", num_steps=2, size=64).recipes[0]["model"] == "tiny-file"


def test_a_single_file_the_standard_configs_do_not_fit_is_one_line(sd1_folder, tmp_path):
    file = tmp_path / "odd.safetensors"
    save_single_file(sd1_folder, file)
    with pytest.raises(ConfigError) as error:
        load_pipeline(str(file), device="cpu")
    assert error.value.field == "config" and "--config" in error.value.fix
    assert "\n" not in error.value.one_line()


def test_a_pickle_checkpoint_needs_trust_by_hash(sd1_folder, tmp_path):
    from safetensors.torch import load_file

    file = tmp_path / "tiny.safetensors"
    save_single_file(sd1_folder, file)
    ckpt = tmp_path / "tiny.ckpt"
    # SD's .ckpt layout: the tensors under "state_dict", beside other pickled objects
    torch.save({"state_dict": load_file(str(file)), "global_step": 1, "note": object.__name__},
               ckpt)
    with pytest.raises(ImageSynthError):
        Registry().add(ckpt, name="untrusted", config=sd1_folder)
    entry = Registry().add(ckpt, name="trusted", config=sd1_folder,
                           trust_pickle=sha256_file(ckpt))
    assert entry.family == "stable-diffusion" and entry.details["arch"] == "sd1"
    reference = load_pipeline(str(sd1_folder), device="cpu")
    assert (samples(load_pipeline("trusted", device="cpu")) - samples(reference)).abs().max() < 1e-5


def test_prediction_type_override_is_recorded_and_used(sd1_folder):
    entry = Registry().add(sd1_folder, name="forced-v", prediction_type="v")
    assert entry.details["prediction"] == "v_prediction" and entry.details["prediction_override"]
    pipe = load_pipeline("forced-v", device="cpu")
    assert pipe.info.prediction == "v_prediction"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    plain = load_pipeline(str(sd1_folder), device="cpu")
    assert not torch.equal(samples(pipe), samples(plain))


def test_bad_folders_and_options_are_one_line_errors(sd1_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sd1_folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ConfigError) as error:
        Registry().add(broken, name="broken")
    assert error.value.field == "vae"
    with pytest.raises(ImageSynthError) as error:
        Registry().add(sd1_folder, name="x", prediction_type="x0")
    assert error.value.field == "prediction_type"
    with pytest.raises(ImageSynthError) as error:
        Registry().add(sd1_folder, name="y", config=sd1_folder)
    assert error.value.field == "config"


def test_models_list_shows_kind_prediction_resolution_encoder_and_hash(sd1_folder):
    from imagesynth.cli.models import describe_entry

    entry = Registry().add(sd1_folder, name="listed")
    about = describe_entry(entry)
    assert about == {"kind": "sd1", "prediction": "epsilon", "resolution": 64,
                     "text_encoder": "CLIP ViT-L/14", "hash": entry.weights_sha256}
    bundled = describe_entry(Registry().get("shapes"))
    assert bundled["kind"] == "diffusion" and bundled["prediction"] == "edm"
    assert bundled["resolution"] == 32


def test_memory_savers_keep_the_result(sd1_folder):
    pipe = load_pipeline(str(sd1_folder), device="cpu")
    plain = samples(pipe)
    pipe.enable_attention_slicing(1)
    assert (samples(pipe) - plain).abs().max() < 1e-4  # sliced sums: last-bit differences
    pipe.vae.config.sample_size = 32  # tiles of 32 px: a 128 px image decodes in tiles
    pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = 32, 4
    pipe.enable_vae_tiling()
    image = pipe("a red circle", seed=0, num_steps=2, size=128).images[0]
    assert image.size == (128, 128)
    with pytest.raises(ConfigError) as error:
        pipe.enable_model_cpu_offload()
    assert error.value.field == "device"


def test_half_precision_weights_stay_close_to_float32(sd1_folder):
    full = samples(load_pipeline(str(sd1_folder), device="cpu"))
    half = load_pipeline(str(sd1_folder), device="cpu", dtype="bfloat16")
    assert half.unet.dtype == torch.bfloat16
    out = samples(half)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - full).abs().max() < 0.1 * full.abs().max()
    with pytest.raises(ConfigError) as error:
        load_pipeline(str(sd1_folder), device="cpu", dtype="int8")
    assert error.value.field == "dtype"


def test_dream_draws_through_a_stable_diffusion_model(sd1_folder, tmp_path):
    from imagesynth.cli import run
    from imagesynth.io.pngmeta import read_recipe

    out = tmp_path / "dream.png"
    code = run(["dream", "a red circle", "--drawer", "diffusion-latent", "--diffusion-model",
                str(sd1_folder), "--steps", "2", "--diffusion-steps", "2", "--size", "64",
                "--cutouts", "2", "--out", str(out)])
    assert code == 0 and out.is_file()
    block = read_recipe(out)["diffusion"]
    assert block["model_hash"] == load_pipeline(str(sd1_folder), device="cpu").model_hash


def test_the_studio_lists_and_runs_a_registered_stable_diffusion_model(sd1_folder, tmp_path):
    from studio_support import StudioProcess

    Registry().add(sd1_folder, name="tiny-sd")
    server = StudioProcess(tmp_path / "data", model="tiny-sd").start()
    try:
        listed = {m["name"]: m for m in server.get("/api/models").json()["models"]}
        assert listed["tiny-sd"]["family"] == "diffusion"
        assert listed["tiny-sd"]["image_size"] == 64 and "sd1" in listed["tiny-sd"]["card"]
        job = server.wait(server.submit("generate", {"prompt": "a (red:1.2) circle",
                                                     "model": "tiny-sd", "steps": 2,
                                                     "width": 96, "height": 64}))
        assert job["state"] == "done", job
        # the A1111-compatible route passes any multiple of 8 through for SD models
        response = server.post("/sdapi/v1/txt2img", {"prompt": "a red circle", "steps": 2,
                                                     "width": 80, "height": 48,
                                                     "override_settings":
                                                         {"sd_model_checkpoint": "tiny-sd"}})
        assert response.status_code == 200, response.text
        from PIL import Image
        import base64
        import io

        image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
        assert image.size == (80, 48)
    finally:
        server.stop()


def test_clip_guidance_and_guidance_rescale_steer_and_reproduce(sd1_folder, tmp_path):
    from imagesynth.generation import GenerateConfig, generate, reproduce_image
    from imagesynth.io.pngmeta import save_png

    pipe = load_pipeline(str(sd1_folder), device="cpu")
    base = dict(prompt="a red circle", model=str(sd1_folder), steps=3, size=64, n=2)
    plain = generate(GenerateConfig(**base), pipe=pipe)
    guided = generate(GenerateConfig(**base, clip_guidance=50.0, clip_model="shapes-clip",
                                     clip_cutouts=2, guidance_rescale=0.7), pipe=pipe)
    assert not torch.equal(plain.samples, guided.samples)
    recipe = guided.recipes[1]
    assert recipe["clip_guidance"] == {"model": "shapes-clip", "scale": 50.0, "cutouts": 2}
    assert recipe["guidance_rescale"] == 0.7
    # per-image cutout seeds: the second image alone equals the second of the batch
    alone = generate(GenerateConfig(**{**base, "n": 1}, seed=1, clip_guidance=50.0,
                                    clip_model="shapes-clip", clip_cutouts=2,
                                    guidance_rescale=0.7), pipe=pipe)
    assert alone.images[0].tobytes() == guided.images[1].tobytes()
    out = tmp_path / "guided.png"
    save_png(guided.images[1], out, recipe)
    assert reproduce_image(out).identical
    with pytest.raises(ConfigError) as error:
        GenerateConfig(**base, clip_guidance=1.0)
    assert error.value.field == "clip_model"
