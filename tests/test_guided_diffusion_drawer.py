"""The diffusion-latent drawer (tiny pixel and latent diffusion models) and MP4 recordings of dream."""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from imagesynth.cli import run
from imagesynth.diffusion import sample_dpmpp_2m
from imagesynth.errors import ConfigError, IntegrityError, MissingFileError
from imagesynth.guided import (DiffusionLatentDrawer, DreamConfig, Mp4Writer, build_drawer, dream,
                               reproduce_from_recipe, save_mp4)
from imagesynth.guided.video import upscale_factor
from imagesynth.io.pngmeta import read_recipe


@pytest.fixture
def ffmpeg():
    """imageio_ffmpeg (the `video` extra, part of `dev`), to read the written MP4s back."""
    return pytest.importorskip("imageio_ffmpeg")


@pytest.fixture(autouse=True)
def shared_text_encoder(monkeypatch, minilm):
    """Loading a diffusion model by path loads its text encoder; reuse the loaded one."""
    import imagesynth.text

    monkeypatch.setattr(imagesynth.text, "load_text_encoder", lambda *a, **k: minilm)


@pytest.fixture(scope="module")
def shapes16(shapes_folder):
    return shapes_folder(32)


@pytest.fixture(scope="module")
def pixel_model(shapes16, tmp_path_factory, minilm):
    """A 16 px pixel-space text-to-image model trained for 3 steps: (folder, pipeline)."""
    from imagesynth.families.diffusion import train_diffusion
    from imagesynth.pipeline import load_pipeline

    result = train_diffusion(shapes16, tmp_path_factory.mktemp("pixel-model"), preset="tiny",
                             overrides=dict(max_steps=3, batch_size=4), show_progress=False,
                             text_encoder=minilm)
    return result.model_dir, load_pipeline(str(result.model_dir), text_encoder=minilm,
                                           device="cpu")


@pytest.fixture(scope="module")
def latent_pipe(shapes16, tmp_path_factory, minilm):
    """A 16 px latent model over an untrained tiny autoencoder (8x8x4 latents)."""
    from imagesynth.families.diffusion import train_diffusion
    from imagesynth.nets.autoencoder import Autoencoder, autoencoder_config
    from imagesynth.pipeline import load_pipeline

    torch.manual_seed(0)
    autoencoder = Autoencoder(autoencoder_config("tiny")).eval()
    result = train_diffusion(shapes16, tmp_path_factory.mktemp("latent-model"), preset="tiny",
                             overrides=dict(max_steps=2, batch_size=4), show_progress=False,
                             autoencoder=autoencoder, autoencoder_hash="ab" * 32,
                             text_encoder=minilm)
    return load_pipeline(str(result.model_dir), autoencoder=autoencoder, text_encoder=minilm,
                         device="cpu")


@pytest.fixture(scope="module")
def scorer(shapes16, tmp_path_factory, minilm):
    """A tiny CLIP (5 steps): the drawer only needs some differentiable score: (folder, scorer)."""
    from imagesynth.clip import load_clip
    from imagesynth.families.clip import train_clip

    result = train_clip(shapes16, tmp_path_factory.mktemp("clip"), preset="tiny",
                        overrides=dict(max_steps=5, eval_every=5), show_progress=False)
    return str(result.model_dir), load_clip(str(result.model_dir), text_encoder=minilm)


def _drawer(pipe, seed=0, sampler="dpmpp_2m", guidance=None):
    return build_drawer("diffusion-latent", 16, 16, torch.Generator().manual_seed(seed),
                        diffusion=pipe, prompt="a red circle", diffusion_steps=3,
                        diffusion_sampler=sampler, diffusion_guidance=guidance)


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_renders_in_range_and_gradients_reach_the_noise(space, pixel_model, latent_pipe):
    pipe = pixel_model[1] if space == "pixel" else latent_pipe
    drawer = _drawer(pipe)
    assert isinstance(drawer, DiffusionLatentDrawer)
    assert [p is drawer.noise for p in drawer.parameters()] == [True]
    image = drawer.render()
    assert image.shape == (1, 3, 16, 16)
    assert 0 <= float(image.detach().min()) and float(image.detach().max()) <= 1
    drawer.unclamped().square().mean().backward()
    grad = drawer.noise.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in pipe.denoiser.parameters())  # the model stays frozen


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler"])
def test_render_is_the_engines_sampler_on_renormalised_noise(pixel_model, sampler):
    from imagesynth.diffusion import sample_euler

    pipe = pixel_model[1]
    drawer = _drawer(pipe, sampler=sampler, guidance=2.0)
    with torch.no_grad():
        drawer.noise.mul_(3.0)  # the scale of the parameter does not matter, only its direction
        rendered = drawer.unclamped()
    z = drawer.noise.detach()
    z = z * (z.numel() ** 0.5 / z.norm())
    engine = {"dpmpp_2m": sample_dpmpp_2m, "euler": sample_euler}[sampler]
    sigmas = pipe.sigmas(3)
    expected = engine(pipe.guided_denoiser(["a red circle"], "", 2.0), z * sigmas[0], sigmas)
    assert torch.allclose(rendered, (expected + 1) / 2, atol=1e-5)


def test_same_seed_same_render_other_seed_other_render(pixel_model):
    pipe = pixel_model[1]
    first, again, other = (_drawer(pipe, seed=s).render().detach() for s in (4, 4, 5))
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("kwargs, field", [
    (dict(width=32, height=32), "size"),
    (dict(width=16, height=8), "size"),
    (dict(num_steps=0), "diffusion_steps"),
    (dict(sampler="euler_ancestral"), "diffusion_sampler"),
    (dict(guidance_scale=-1.0), "diffusion_guidance"),
])
def test_bad_drawer_options_name_the_field(pixel_model, kwargs, field):
    settings = dict(height=16, width=16, generator=torch.Generator(), pipeline=pixel_model[1],
                    prompt="a red circle")
    with pytest.raises(ConfigError) as info:
        DiffusionLatentDrawer(**{**settings, **kwargs})
    assert info.value.field == field


def test_dream_config_errors_name_the_field(scorer):
    with pytest.raises(ConfigError) as info:
        dream(DreamConfig("a red circle", drawer="diffusion-latent", width=16, height=16,
                          steps=1, cutouts=1), scorer=scorer[1])
    assert info.value.field == "diffusion_model"
    with pytest.raises(ConfigError) as info:
        DreamConfig("a red circle", drawer="diffusion-latent", init_image="x.png")
    assert info.value.field == "init_image"


def _config(scorer_folder, model_folder, **overrides):
    settings = dict(prompt="a red circle | blurry:-0.5", drawer="diffusion-latent", steps=3,
                    width=16, height=16, cutouts=2, scorer=scorer_folder, eval_every=1,
                    frame_every=1, diffusion_model=str(model_folder), diffusion_steps=2)
    return DreamConfig(**{**settings, **overrides})


def test_dream_is_deterministic_and_reproduces_from_its_recipe(pixel_model, scorer, tmp_path):
    folder, pipe = pixel_model
    config = _config(scorer[0], folder)
    result = dream(config, scorer=scorer[1], diffusion=pipe)
    path = result.save(tmp_path / "a.png")
    again = dream(config, scorer=scorer[1], diffusion=pipe).save(tmp_path / "b.png")
    assert path.read_bytes() == again.read_bytes()

    recipe = read_recipe(path)
    block = recipe["diffusion"]
    assert block["model_hash"] == pipe.model_hash and block["steps"] == 2
    assert block["guidance_scale"] == pipe.default_guidance and block["sampler"] == "dpmpp_2m"
    assert block["prompt"] == "a red circle" and block["negative_prompt"] == "blurry"
    assert recipe["dream"]["diffusion_guidance"] == pipe.default_guidance  # resolved, not None
    replayed = reproduce_from_recipe(recipe, scorer=scorer[1], diffusion=pipe)
    assert replayed.tobytes() == Image.open(path).convert("RGB").tobytes()

    recipe["diffusion"]["model_hash"] = "0" * 64
    with pytest.raises(IntegrityError) as info:
        reproduce_from_recipe(recipe, scorer=scorer[1], diffusion=pipe)
    assert info.value.field == "diffusion_model"


def test_cli_dream_diffusion_latent_mp4_and_reproduce(pixel_model, scorer, tmp_path, capsys,
                                                      ffmpeg):
    folder, _ = pixel_model
    out, mp4 = tmp_path / "cli.png", tmp_path / "cli.mp4"
    code = run(["dream", "a red circle", "--drawer", "diffusion-latent", "--diffusion-model",
                str(folder), "--diffusion-steps", "2", "--diffusion-guidance", "2.5",
                "--scorer", scorer[0], "--steps", "4", "--size", "16", "--cutouts", "2",
                "--frame-every", "2", "--out", str(out), "--mp4", str(mp4)])
    assert code == 0, capsys.readouterr().err
    assert read_recipe(out)["diffusion"]["guidance_scale"] == 2.5
    data = mp4.read_bytes()
    assert data[4:8] == b"ftyp"
    frames, _ = ffmpeg.count_frames_and_secs(str(mp4))
    assert frames == 3  # steps 0, 2, 4
    capsys.readouterr()
    assert run(["reproduce", str(out)]) == 0
    assert "identical" in capsys.readouterr().out


def test_cli_wrong_size_is_one_line_naming_size(pixel_model, scorer, tmp_path, capsys):
    code = run(["dream", "a red circle", "--drawer", "diffusion-latent", "--diffusion-model",
                str(pixel_model[0]), "--scorer", scorer[0], "--size", "32",
                "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "size:" in err and "16x16" in err


def test_mp4_is_valid_upscaled_and_streams_odd_sizes(tmp_path, ffmpeg):
    frames = [Image.new("RGB", (15, 9), (40 * i, 0, 255 - 40 * i)) for i in range(5)]
    path = save_mp4(frames, tmp_path / "odd.mp4", fps=10)
    assert path.read_bytes()[4:8] == b"ftyp"
    reader = ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    factor = upscale_factor(15, 9, 256)
    assert factor % 2 == 0 and 15 * factor >= 256
    assert tuple(meta["size"]) == (15 * factor, 9 * factor) and count == 5
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed, not left behind


def test_mp4_failure_leaves_no_file(tmp_path, ffmpeg):
    with pytest.raises(ConfigError):
        with Mp4Writer(tmp_path / "bad.mp4") as writer:
            writer.append(Image.new("RGB", (16, 16)))
            writer.append(Image.new("RGB", (8, 8)))  # a different size is refused
    with pytest.raises(ConfigError):
        with Mp4Writer(tmp_path / "empty.mp4"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_missing_imageio_ffmpeg_is_one_line_with_the_install_command(monkeypatch, scorer,
                                                                     tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # makes the import fail
    with pytest.raises(MissingFileError):
        Mp4Writer(tmp_path / "x.mp4")
    code = run(["dream", "a red circle", "--scorer", scorer[0], "--steps", "1", "--size", "16",
                "--out", str(tmp_path / "x.png"), "--mp4", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "mp4:" in err and "pip install 'imagesynth[video]'" in err
    assert not (tmp_path / "x.png").exists()  # refused before the run, not after it
