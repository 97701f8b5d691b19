"""End to end: tiny trained model -> imagesynth.load -> images with recipes -> reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import imagesynth
from imagesynth.cli import run
from imagesynth.errors import ConfigError, InputImageError, NumericError
from imagesynth.io.files import sha256_file
from imagesynth.io.pngmeta import read_recipe, save_png


@pytest.fixture(autouse=True)
def shared_text_encoder(monkeypatch, minilm):
    """CLI commands load the model's text encoder; reuse the session's to keep tests fast."""
    import imagesynth.text

    monkeypatch.setattr(imagesynth.text, "load_text_encoder", lambda *a, **k: minilm)


@pytest.fixture(scope="module")
def tiny_model(tiny_diffusion_model):
    return tiny_diffusion_model


@pytest.fixture(scope="module")
def pipe(tiny_model, minilm):
    from imagesynth.pipeline import load_pipeline

    return load_pipeline(str(tiny_model), text_encoder=minilm)


def test_a_text_encoder_of_another_width_is_refused_at_load(tiny_model):
    from types import SimpleNamespace

    from imagesynth.pipeline import load_pipeline

    with pytest.raises(ConfigError, match="384 wide") as error:
        load_pipeline(str(tiny_model), text_encoder=SimpleNamespace(state_dim=768))
    assert error.value.field == "text_encoder"


def test_load_is_lazy_and_returns_a_pipeline(pipe, tiny_model):
    assert pipe.allowed_sizes == [16]
    assert pipe.model_hash == sha256_file(tiny_model / "model.safetensors")
    assert callable(imagesynth.load)


def test_same_seed_same_bytes_and_batch_independence(pipe):
    batch = pipe("a red circle", seed=5, num_images=3, num_steps=3)
    alone = pipe("a red circle", seed=6, num_steps=3)
    again = pipe("a red circle", seed=5, num_images=3, num_steps=3)
    assert [r["seed"] for r in batch.recipes] == [5, 6, 7]
    assert batch.images[1].tobytes() == alone.images[0].tobytes()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(batch.images, again.images))
    assert batch.images[0].tobytes() != batch.images[1].tobytes()


def test_mixed_prompts_in_a_batch_match_single_runs(pipe):
    mixed = pipe(["a red circle", "a blue square left of a green triangle"], seed=[1, 2],
                 num_steps=2, sampler="euler_ancestral")
    single = pipe("a blue square left of a green triangle", seed=2, num_steps=2,
                  sampler="euler_ancestral")
    assert mixed.images[1].tobytes() == single.images[0].tobytes()


def test_recipe_is_complete(pipe):
    recipe = pipe("a red circle", seed=3, negative_prompt="blue", num_steps=2,
                  guidance_scale=2.0).recipes[0]
    for key in ("prompt", "negative_prompt", "seed", "steps", "sampler", "sampler_options",
                "guidance_scale", "size", "model", "model_hash", "versions", "device", "dtype",
                "timestamp"):
        assert key in recipe, key
    assert recipe["size"] == [16, 16] and recipe["negative_prompt"] == "blue"
    assert set(recipe["versions"]) == {"imagesynth", "torch", "diffusers"}


def test_img2img_and_inpainting_keep_what_they_should(pipe, tmp_path):
    init = Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8))
    init.save(tmp_path / "init.png")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    edited = pipe("a red circle", seed=0, num_steps=3, init_image=tmp_path / "init.png",
                  strength=0.3)
    assert edited.recipes[0]["strength"] == 0.3 and "init_image_hash" in edited.recipes[0]
    painted = pipe("a red circle", seed=0, num_steps=3, init_image=tmp_path / "init.png",
                   mask=tmp_path / "mask.png")
    pixels = np.asarray(painted.images[0]).astype(int)
    outside = np.ones((16, 16), bool)
    outside[4:12, 4:12] = False
    assert np.abs(pixels[outside] - 200).max() <= 1  # kept region converges to the input
    assert "mask_hash" in painted.recipes[0]


def test_outpainting_keeps_the_shrunk_image_and_repaints_the_border(pipe, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    result = pipe("a red circle", seed=0, num_steps=3, init_image=tmp_path / "in.png",
                  outpaint=(4, 0, 4, 0))
    inner = np.asarray(Image.open(tmp_path / "in.png").resize((8, 16), Image.Resampling.LANCZOS))
    pixels = np.asarray(result.images[0]).astype(int)
    assert np.abs(pixels[:, 4:12] - inner.astype(int)).max() <= 1  # the kept image comes back
    assert np.abs(pixels[:, :4] - pixels[:, 4:5]).max() > 8  # the border was painted anew
    assert result.recipes[0]["outpaint"] == [4, 0, 4, 0]


def test_cli_outpaint_then_reproduce_is_identical(tiny_model, tmp_path, capsys):
    Image.new("RGB", (16, 16), (30, 90, 200)).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    assert run(["generate", "a red circle", "--model", str(tiny_model), "--steps", "3",
                "--init-image", str(tmp_path / "in.png"), "--outpaint", "2,2,2,2",
                "--out", str(out)]) == 0
    assert run(["reproduce", str(out), "--init-image", str(tmp_path / "in.png")]) == 0
    assert "identical" in capsys.readouterr().out


@pytest.mark.parametrize("borders, field", [("8,8,8,8", "outpaint"), ("1,2", "outpaint"),
                                            ("0", "outpaint")])
def test_bad_outpaint_borders_name_the_field(tiny_model, tmp_path, capsys, borders, field):
    Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    code = run(["generate", "a red circle", "--model", str(tiny_model), "--steps", "2",
                "--init-image", str(tmp_path / "in.png"), "--outpaint", borders,
                "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"{field}:" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt="  "), "prompt"),
    (dict(prompt="a red circle", guidance_scale=-1.0), "guidance"),
    (dict(prompt="a red circle", size=32), "size"),
    (dict(prompt="a red circle", num_steps=0), "steps"),
    (dict(prompt="a red circle", sampler="plms"), "sampler"),
])
def test_bad_arguments_name_the_field(pipe, kwargs, field):
    with pytest.raises(ConfigError) as info:
        pipe(**kwargs)
    assert info.value.field == field


def test_bad_input_images_are_one_line_errors(pipe, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(InputImageError):
        pipe("a red circle", init_image=tmp_path / "broken.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "init.png")
    Image.new("L", (8, 8)).save(tmp_path / "small.png")
    with pytest.raises(InputImageError) as info:
        pipe("a red circle", init_image=tmp_path / "init.png", mask=tmp_path / "small.png")
    assert info.value.field == "mask"


def test_nan_during_sampling_fails_and_writes_no_file(pipe, tmp_path, monkeypatch, capsys):
    import imagesynth.api

    original = pipe.denoiser
    monkeypatch.setattr(pipe, "denoiser", lambda x, sigma, **cond: x * float("nan"))
    with pytest.raises(NumericError):
        pipe("a red circle", num_steps=2)
    monkeypatch.setattr(imagesynth.api, "load", lambda *a, **k: pipe)
    code = run(["generate", "a red circle", "--steps", "2", "--out", str(tmp_path / "out")])
    assert code == 1 and "NaN" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.png"))
    pipe.denoiser = original


def test_cli_generate_then_reproduce_is_identical(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    code = run(["generate", "a green square", "--model", str(tiny_model), "--n", "2",
                "--seed", "9", "--steps", "2", "--out", str(out), "--grid"])
    assert code == 0, capsys.readouterr().err
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["a-green-square-10.png", "a-green-square-9-grid.png", "a-green-square-9.png"]
    recipe = read_recipe(out / "a-green-square-10.png")
    assert recipe["seed"] == 10 and recipe["steps"] == 2 and recipe["schema"] == 1
    capsys.readouterr()
    assert run(["reproduce", str(out / "a-green-square-10.png")]) == 0
    assert "identical" in capsys.readouterr().out


def test_reproduce_reports_changed_pixels(pipe, tmp_path, capsys):
    result = pipe("a red circle", seed=1, num_steps=2)
    pixels = np.asarray(result.images[0]).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    save_png(Image.fromarray(pixels), tmp_path / "edited.png", result.recipes[0])
    assert run(["reproduce", str(tmp_path / "edited.png")]) == 1
    assert "1 pixels differ" in capsys.readouterr().out


@pytest.mark.parametrize("argv, code, message", [
    (["generate", "a red circle", "--model", "no-such-model"], 2, "no model named"),
    (["generate", "", "--model", "{model}"], 2, "prompt"),
    (["generate", "a red circle", "--model", "{model}", "--size", "64"], 2, "16x16"),
    (["generate", "a red circle", "--model", "{model}", "--guidance", "-1"], 2, "guidance"),
])
def test_cli_errors_are_one_line(tiny_model, capsys, argv, code, message):
    argv = [a.replace("{model}", str(tiny_model)) for a in argv]
    assert run(argv) == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_empty_negative_prompt_is_the_trained_unconditional_branch(pipe, minilm):
    states, mask = pipe.encode_prompts([""])
    direct = minilm([""])
    assert torch.allclose(states[0, :int(mask.sum())], direct.states[0, :int(direct.mask.sum())])
