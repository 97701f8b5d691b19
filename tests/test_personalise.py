"""LoRA fine-tuning and DreamBooth end to end on a tiny model: CLI, recipes, reproduce, fuse, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from imagesynth.cli import run
from imagesynth.data import ShapesConfig, build_shapes_dataset
from imagesynth.data.shapes_subjects import (one_colour_silhouette, render_striped_circle,
                                             render_two_tone_circle, sample_subject,
                                             stripe_pattern, two_tone_pattern)
from imagesynth.errors import ConfigError, DataError
from imagesynth.families.diffusion import train_diffusion
from imagesynth.families.personalise import (DreamBoothSettings, LoraSettings,
                                             finetune_dreambooth, finetune_lora)
from imagesynth.io.pngmeta import read_recipe


@pytest.fixture(autouse=True)
def shared_text_encoder(monkeypatch, minilm):
    """CLI commands load the model's text encoder; reuse the session's to keep tests fast."""
    import imagesynth.text

    monkeypatch.setattr(imagesynth.text, "load_text_encoder", lambda *a, **k: minilm)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm):
    """A tiny base model, its data and a LoRA trained on it for a few steps."""
    root = tmp_path_factory.mktemp("personalise")
    build_shapes_dataset(root / "data", ShapesConfig(count=16, size=16, seed=0))
    model = train_diffusion(root / "data", root / "base", preset="tiny",
                            overrides=dict(max_steps=3, batch_size=4), show_progress=False,
                            text_encoder=minilm).model_dir
    result = finetune_lora(str(model), root / "data", root / "lora", LoraSettings(rank=2),
                           overrides=dict(max_steps=4, batch_size=4, learning_rate=5e-2),
                           text_encoder=minilm, show_progress=False)
    return root, model, result


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_finetune_trains_only_the_adapter_and_resumes(tiny, minilm):
    root, model, result = tiny
    assert result.output.name == "lora.safetensors" and result.steps == 4
    assert 0 < result.trainable_parameters < 20_000  # the tiny UNet has ~200 k weights
    paused = finetune_lora(str(model), root / "data", root / "paused", LoraSettings(rank=2),
                           overrides=dict(max_steps=4, batch_size=4, learning_rate=5e-2),
                           text_encoder=minilm, show_progress=False, stop_after=2)
    assert (paused.steps, paused.stopped) == (2, "time_budget")
    resumed = finetune_lora(str(model), root / "data", root / "paused", LoraSettings(rank=2),
                            overrides=dict(max_steps=4, batch_size=4, learning_rate=5e-2),
                            text_encoder=minilm, show_progress=False)
    assert resumed.steps == 4
    from safetensors.torch import load_file

    paused_tensors, straight = load_file(resumed.output), load_file(result.output)
    assert all(paused_tensors[k].equal(straight[k]) for k in straight)  # resume is exact


def test_generate_with_lora_records_it_and_reproduces(tiny, tmp_path, capsys):
    root, model, result = tiny
    plain, adapted = tmp_path / "plain.png", tmp_path / "lora.png"
    assert run(["generate", "a red circle", "--model", str(model), "--out", str(plain)]) == 0
    assert run(["generate", "a red circle", "--model", str(model), "--lora",
                f"{result.output}:0.8", "--out", str(adapted)]) == 0
    recipe = read_recipe(adapted)
    (entry,) = recipe["loras"]
    assert entry["weight"] == 0.8 and len(entry["sha256"]) == 64
    assert np.abs(pixels(plain) - pixels(adapted)).max() > 0
    assert run(["reproduce", str(adapted)]) == 0
    assert "identical" in capsys.readouterr().out


def test_reproduce_refuses_a_changed_or_missing_lora(tiny, tmp_path, capsys):
    root, model, result = tiny
    copy = tmp_path / "style.safetensors"
    copy.write_bytes(result.output.read_bytes())
    image = tmp_path / "x.png"
    assert run(["generate", "a red circle", "--model", str(model), "--lora", str(copy),
                "--out", str(image)]) == 0
    copy.write_bytes(copy.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    capsys.readouterr()
    assert run(["reproduce", str(image)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: lora:") and "changed" in error and "\n" not in error
    copy.unlink()
    assert run(["reproduce", str(image)]) == 2
    assert "missing" in capsys.readouterr().err


def test_weight_zero_gives_the_base_images_bytes(tiny, minilm):
    from imagesynth.pipeline import load_pipeline

    root, model, result = tiny
    pipe = load_pipeline(str(model), text_encoder=minilm)
    base = pipe("a blue square", seed=3, num_images=2).images
    zero = pipe("a blue square", seed=3, num_images=2, loras=[(result.output, 0.0)]).images
    assert [a.tobytes() for a in base] == [b.tobytes() for b in zero]


def test_fused_model_draws_what_the_lora_draws(tiny, tmp_path):
    root, model, result = tiny
    fused = tmp_path / "fused"
    assert run(["lora", "fuse", "--model", str(model), "--lora", f"{result.output}:0.8",
                "--out", str(fused)]) == 0
    config = json.loads((fused / "config.json").read_text())
    assert config["fused_loras"][0]["weight"] == 0.8
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert run(["generate", "a red circle", "--model", str(fused), "--out", str(a)]) == 0
    assert run(["generate", "a red circle", "--model", str(model), "--lora",
                f"{result.output}:0.8", "--out", str(b)]) == 0
    assert np.abs(pixels(a) - pixels(b)).max() <= 1  # merged weights round differently


@pytest.mark.parametrize("argv, field", [
    (["--lora", "x.safetensors:strong"], "lora"),
    (["--lora", "absent.safetensors"], "lora"),
])
def test_bad_lora_arguments_are_one_line_errors(tiny, tmp_path, capsys, argv, field):
    root, model, _ = tiny
    code = run(["generate", "a red circle", "--model", str(model), "--out",
                str(tmp_path / "x.png"), *argv])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith(f"error: {field}:") and "\n" not in error


def test_lora_of_another_base_is_refused(tiny, tmp_path, capsys, minilm):
    root, model, result = tiny
    other = train_diffusion(root / "data", tmp_path / "other", preset="tiny",
                            overrides=dict(max_steps=1, batch_size=4, seed=1),
                            show_progress=False, text_encoder=minilm).model_dir
    assert run(["generate", "a red circle", "--model", str(other), "--lora", str(result.output),
                "--out", str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err
    assert "lora:" in error and "was trained on" in error


def test_bad_rank_and_targets_name_their_field(tiny, tmp_path, capsys):
    root, model, _ = tiny
    for flag, value, field in (("--rank", "0", "rank"), ("--targets", "mlp", "targets")):
        code = run(["finetune", "lora", "--model", str(model), "--data", str(root / "data"),
                    "--out", str(tmp_path / "run"), flag, value])
        assert code == 2 and capsys.readouterr().err.startswith(f"error: {field}:")


def subject_folder(path, count: int, size: int = 16):
    """`count` images of the striped-circle subject at different places."""
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        render_striped_circle(sample_subject(rng, size), size).save(path / f"{i}.png")
    return path


def test_the_striped_subject_passes_the_pattern_test_and_flat_circles_do_not():
    from imagesynth.data.shapes import Scene, ShapeObject, render_scene
    from imagesynth.data.shapes_check import detect_objects

    rng = np.random.default_rng(1)
    for position in ("left", "bottom", None):
        image = render_striped_circle(sample_subject(rng, 32, position), 32)
        verdict = stripe_pattern(image)
        assert verdict.ok and verdict.bands >= 3 and min(verdict.shares) > 0.3
        assert verdict.row_purity > 0.9
        (found,) = detect_objects(image)
        assert found.shape == "circle"
    for colour in ("red", "blue", "purple"):
        flat = render_scene(Scene(32, (ShapeObject(colour, "circle", 6, 6, 12),)))
        assert not stripe_pattern(flat).ok


def test_the_two_tone_subject_passes_its_test_and_stripes_flat_or_mirrored_do_not():
    from imagesynth.data.shapes import Scene, ShapeObject, render_scene
    from imagesynth.data.shapes_check import detect_objects

    rng = np.random.default_rng(2)
    for position in ("left", "right", "top", "bottom", None):
        obj = sample_subject(rng, 32, position)
        image = render_two_tone_circle(obj, 32)
        verdict = two_tone_pattern(image)
        assert verdict.ok and min(verdict.shares) > 0.35 and verdict.separation > 0.35
        pixels = np.asarray(image)
        red, blue = (np.all(pixels == colour, axis=-1) for colour in ((220, 40, 40),
                                                                       (40, 80, 220)))
        assert np.nonzero(red)[1].max() < np.nonzero(blue)[1].min()  # a clean vertical split
        assert not stripe_pattern(image).ok
        # on the one-colour silhouette the checker sees one circle where the subject is
        (found,) = detect_objects(one_colour_silhouette(image))
        assert found.shape == "circle" and found.colour == "red"
        assert np.hypot(found.centroid[0] - obj.centroid[0],
                        found.centroid[1] - obj.centroid[1]) < 0.1
        assert not two_tone_pattern(render_striped_circle(obj, 32)).ok
        mirrored = two_tone_pattern(render_two_tone_circle(obj, 32, ("blue", "red")))
        assert not mirrored.ok and mirrored.separation < -0.35
    for colour in ("red", "blue", "purple"):
        flat = render_scene(Scene(32, (ShapeObject(colour, "circle", 6, 6, 12),)))
        assert not two_tone_pattern(flat).ok
    speckled = np.asarray(render_two_tone_circle(ShapeObject("red", "circle", 8, 8, 14), 32)).copy()
    inside = np.abs(speckled.astype(int) - 255).sum(axis=-1) > 100
    speckled[inside] = np.array([(220, 40, 40), (40, 80, 220)])[rng.integers(0, 2, inside.sum())]
    verdict = two_tone_pattern(speckled)
    assert not verdict.ok and min(verdict.shares) > 0.35 and abs(verdict.separation) < 0.15


def test_dreambooth_with_prior_preservation_writes_a_lora(tiny, tmp_path, minilm):
    root, model, _ = tiny
    images = subject_folder(tmp_path / "subject", 3)
    settings = DreamBoothSettings(token="sks", class_prompt="a circle", prior_preservation=True,
                                  num_class_images=3)
    assert settings.instance_prompt == "a sks circle"
    result = finetune_dreambooth(str(model), images, tmp_path / "run", settings,
                                 LoraSettings(rank=2), overrides=dict(max_steps=2),
                                 text_encoder=minilm, show_progress=False)
    assert result.output.name == "lora.safetensors" and result.steps == 2
    assert set(result.metrics) >= {"instance_loss", "prior_loss"}
    manifest = json.loads((tmp_path / "run/class_images/manifest.json").read_text())
    assert manifest["prompt"] == "a circle" and len(list((tmp_path / "run/class_images")
                                                         .glob("*.png"))) == 3


def test_dreambooth_full_finetune_writes_a_model_and_resizes_other_sizes(tiny, tmp_path,
                                                                       minilm):
    root, model, _ = tiny
    images = subject_folder(tmp_path / "subject", 3, size=24)
    result = finetune_dreambooth(str(model), images, tmp_path / "run",
                                 DreamBoothSettings(token="zwx", class_prompt="a circle"),
                                 overrides=dict(max_steps=1), text_encoder=minilm,
                                 show_progress=False)
    assert (result.output / "model.safetensors").is_file()
    assert any("resized to 16x16" in note for note in result.notes)


def test_dreambooth_bad_inputs_name_their_field(tiny, tmp_path, minilm):
    root, model, _ = tiny
    images = subject_folder(tmp_path / "subject", 3)
    with pytest.raises(ConfigError) as error:
        DreamBoothSettings(token=" ", class_prompt="a circle")
    assert error.value.field == "token"
    with pytest.raises(ConfigError, match="already a word of the model's captions") as error:
        finetune_dreambooth(str(model), images, tmp_path / "a",
                            DreamBoothSettings(token="red", class_prompt="a circle"),
                            text_encoder=minilm, show_progress=False)
    assert error.value.field == "token"
    few = subject_folder(tmp_path / "few", 2)
    with pytest.raises(DataError, match="at least 3") as error:
        finetune_dreambooth(str(model), few, tmp_path / "b",
                            DreamBoothSettings(token="sks", class_prompt="a circle"),
                            text_encoder=minilm, show_progress=False)
    assert error.value.field == "images"
