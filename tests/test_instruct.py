"""Instruction editing: edit triples, zero-initialised source channels, dual guidance, the
training run, `imagesynth edit` and its reproduction, and the one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imagesynth.cli import run
from imagesynth.data.folder import CaptionedImageFolder
from imagesynth.data.shapes import render_scene
from imagesynth.data.shapes_check import check
from imagesynth.data.shapes_edits import (EDIT_TYPES, ShapesEditsConfig, build_shapes_edits,
                                          edit_for_index, read_triples)
from imagesynth.diffusion import ClassifierFreeGuidance, EDMDenoiser
from imagesynth.diffusion.instruct import InstructPix2PixGuidance
from imagesynth.errors import ConfigError, InputImageError
from imagesynth.io.pngmeta import read_recipe
from imagesynth.nets.unet import build_unet, unet_config
from imagesynth.registry import write_model_folder


# --- edit triples ----------------------------------------------------------------------------

def test_triples_are_deterministic_per_seed_and_cycle_the_types():
    config = ShapesEditsConfig(count=10, seed=3)
    first = [edit_for_index(config, i) for i in range(10)]
    again = [edit_for_index(config, i) for i in range(10)]
    other = [edit_for_index(ShapesEditsConfig(count=10, seed=4), i) for i in range(10)]
    assert first == again
    assert first != other
    assert [t.edit for t in first] == list(EDIT_TYPES) * 2


@pytest.mark.parametrize("edit", EDIT_TYPES)
def test_after_image_passes_its_target_caption_and_before_image_fails_it(edit):
    config = ShapesEditsConfig(count=200, seed=0)
    index = EDIT_TYPES.index(edit)
    triples = [edit_for_index(config, index + len(EDIT_TYPES) * k) for k in range(40)]
    assert all(t.edit == edit for t in triples)
    for triple in triples:
        assert check(render_scene(triple.after), triple.after_caption).ok, triple
        # moves are judged by the position word: the before image is on the other side
        assert not check(render_scene(triple.before), triple.after_caption).ok, triple
        assert check(render_scene(triple.before), triple.before_caption).ok, triple


def test_edit_folder_layout_splits_and_sources(tmp_path):
    summary = build_shapes_edits(tmp_path / "edits", ShapesEditsConfig(count=40, size=16))
    records = read_triples(tmp_path / "edits")
    assert len(records) == 40 == summary.count
    for record in records:
        for key in ("instruction", "edit", "before_caption", "after_caption", "source", "split"):
            assert record[key]
        assert record["caption"] == record["after_caption"]
        assert Image.open(tmp_path / "edits" / record["source"]).size == (16, 16)
        if record["held_out_pair"]:
            assert record["split"] == "test"
    assert {r["split"] for r in records} >= {"train", "test"}
    # the folder reader sees the after images only, never the sources
    folder = CaptionedImageFolder(tmp_path / "edits")
    assert len(folder) == 40 and all(i.file.startswith("images/") for i in folder.items)


# --- zero-initialised source channels --------------------------------------------------------

def _base_folder(tmp_path, coordinates: bool):
    """A tiny random 'trained' diffusion model folder (16 px) and its UNet config."""
    unet = unet_config("tiny", text_dim=16, coordinates=coordinates)
    torch.manual_seed(0)
    network = build_unet(unet)
    for parameter in network.parameters():  # diffusers zero-inits conv_out: make it matter
        parameter.data.normal_(0, 0.05)
    config = {"family": "diffusion", "text_encoder": "minilm", "image_size": 16, "channels": 3,
              "sample_size": 16, "autoencoder": None, "unet": unet, "sigma_data": 0.5}
    folder = write_model_folder(tmp_path / "base", network.state_dict(), config, "# base\n")
    return folder, network, unet


@pytest.mark.parametrize("coordinates", [False, True])
def test_zero_initialised_source_channels_leave_the_output_bit_identical(tmp_path, coordinates):
    from imagesynth.diffusion.finetune import initialise_from
    from imagesynth.families.instruct import instruct_unet_config

    folder, base_network, unet = _base_folder(tmp_path, coordinates)
    widened_config = instruct_unet_config(unet)
    assert widened_config["in_channels"] == unet["in_channels"] + 3
    widened_network = build_unet(widened_config)
    initialise_from(widened_network, str(folder), text_encoder="minilm", image_size=16,
                    channels=3, sample_size=16, autoencoder_sha256=None)
    base, widened = EDMDenoiser(base_network).eval(), EDMDenoiser(widened_network).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 16, 16, generator=generator)
    sigma = torch.tensor([0.1, 1.0, 20.0])
    cond = {"encoder_hidden_states": torch.randn(3, 5, 16, generator=generator)}
    source = torch.rand(3, 3, 16, 16, generator=generator) * 2 - 1
    with torch.no_grad():
        expected = base(x, sigma, **cond)
        assert torch.equal(widened(x, sigma, **cond, source=source), expected)
        assert torch.equal(widened(x, sigma, **cond), expected)  # no source = zeros
        # the test can fail: once the source weights move, the source changes the output
        widened_network.unet.conv_in.weight[:, -3:].normal_(0, 0.1)
        assert not torch.allclose(widened(x, sigma, **cond, source=source), expected)


def test_a_model_without_source_channels_refuses_a_source():
    network = build_unet("tiny", text_dim=16)
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ConfigError) as error:
        network(x, torch.zeros(1), torch.zeros(1, 2, 16), source=x)
    assert error.value.field == "model"


# --- dual guidance -----------------------------------------------------------------------------

def _toy_denoiser(x, sigma, encoder_hidden_states, source):
    """A nonlinear toy denoiser of x, the text and the source (different per batch row)."""
    text = encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None]
    scale = sigma[:, None, None, None]
    return torch.tanh(x * 0.7 + text) * (1 + source.pow(2)) + 0.3 * source * scale


@pytest.fixture
def toy():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=generator)
    sigma = torch.tensor([0.5, 2.0])
    cond = {"encoder_hidden_states": torch.randn(2, 3, 8, generator=generator)}
    uncond = {"encoder_hidden_states": torch.randn(2, 3, 8, generator=generator)}
    source = torch.randn(1, 3, 4, 4, generator=generator)
    return x, sigma, cond, uncond, source


@pytest.mark.parametrize("s_I,s_T", [(1.5, 7.0), (0.5, 2.0), (2.0, 0.0), (0.0, 3.0), (1.2, 1.2)])
def test_dual_guidance_equals_equation_3_by_hand(toy, s_I, s_T):
    x, sigma, cond, uncond, source = toy
    src, none = source.expand(2, -1, -1, -1), torch.zeros(2, 3, 4, 4)
    D_00 = _toy_denoiser(x, sigma, **uncond, source=none)
    D_i0 = _toy_denoiser(x, sigma, **uncond, source=src)
    D_it = _toy_denoiser(x, sigma, **cond, source=src)
    expected = D_00 + s_I * (D_i0 - D_00) + s_T * (D_it - D_i0)
    guided = InstructPix2PixGuidance(_toy_denoiser, cond, uncond, source, s_I, s_T)
    torch.testing.assert_close(guided(x, sigma), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("s_T", [0.0, 1.0, 4.0])
def test_image_scale_one_is_ordinary_cfg_with_the_image_given(toy, s_T):
    x, sigma, cond, uncond, source = toy

    def with_image(x, sigma, **c):  # CFG stacks both branches: the image goes with every row
        return _toy_denoiser(x, sigma, **c, source=source.expand(x.shape[0], -1, -1, -1))

    expected = ClassifierFreeGuidance(with_image, cond, uncond, s_T)(x, sigma)
    guided = InstructPix2PixGuidance(_toy_denoiser, cond, uncond, source, 1.0, s_T)
    torch.testing.assert_close(guided(x, sigma), expected, rtol=1e-6, atol=1e-6)


def test_both_scales_zero_is_the_unconditional_branch_exactly(toy):
    x, sigma, cond, uncond, source = toy
    calls = []

    def counting(x, sigma, **kwargs):
        calls.append(x.shape[0])
        return _toy_denoiser(x, sigma, **kwargs)

    guided = InstructPix2PixGuidance(counting, cond, uncond, source, 0.0, 0.0)
    expected = _toy_denoiser(x, sigma, **uncond, source=torch.zeros(2, 3, 4, 4))
    assert torch.equal(guided(x, sigma), expected)
    assert calls == [2]  # only the unconditional branch ran


@pytest.mark.parametrize("field,s_I,s_T", [("image_guidance", -0.5, 3.0),
                                           ("guidance", 1.5, -1.0),
                                           ("guidance", 1.5, float("nan"))])
def test_negative_or_non_finite_scales_are_refused(toy, field, s_I, s_T):
    _, _, cond, uncond, source = toy
    with pytest.raises(ConfigError) as error:
        InstructPix2PixGuidance(_toy_denoiser, cond, uncond, source, s_I, s_T)
    assert error.value.field == field


# --- training, editing, reproduction, errors ----------------------------------------------------

@pytest.fixture(autouse=True)
def shared_text_encoder(monkeypatch, minilm):
    """CLI commands load the model's text encoder; reuse the session's to keep tests fast."""
    import imagesynth.text

    monkeypatch.setattr(imagesynth.text, "load_text_encoder", lambda *a, **k: minilm)


@pytest.fixture(scope="module")
def tiny_instruct(tmp_path_factory, minilm):
    """A tiny base model (3 steps) fine-tuned into an instruction model (4 steps), 16 px."""
    from imagesynth.data import ShapesConfig, build_shapes_dataset
    from imagesynth.families.diffusion import train_diffusion
    from imagesynth.families.instruct import train_instruct

    root = tmp_path_factory.mktemp("instruct")
    build_shapes_dataset(root / "shapes", ShapesConfig(count=16, size=16, seed=0))
    base = train_diffusion(root / "shapes", root / "base", preset="tiny",
                           overrides=dict(max_steps=3, batch_size=4), show_progress=False,
                           text_encoder=minilm)
    build_shapes_edits(root / "edits", ShapesEditsConfig(count=30, size=16))
    result = train_instruct(str(base.model_dir), root / "edits", root / "run",
                            overrides=dict(max_steps=4, batch_size=4, warmup_steps=1),
                            show_progress=False, text_encoder=minilm)
    return root, base.model_dir, result


def test_training_writes_an_instruction_model_folder(tiny_instruct):
    root, _, result = tiny_instruct
    config = json.loads((result.model_dir / "config.json").read_text())
    assert result.steps == 4
    assert config["instruct"]["source_channels"] == 3
    assert config["unet"]["in_channels"] == 6 and config["unet"]["source_channels"] == 3
    assert config["instruct"]["base_model"]["sha256"]
    card = (result.model_dir / "CARD.md").read_text()
    assert "images per second" in card and "4 steps of batch 4" in card
    assert "make" in (result.model_dir / "captions.txt").read_text()
    logged = [json.loads(line) for line in (root / "run" / "log.jsonl").read_text().splitlines()]
    assert logged and "dropped_image" in logged[-1]


def test_condition_dropout_fractions_follow_the_paper():
    from imagesynth.families.instruct import InstructConfig, InstructObjective
    from imagesynth.train.datasets import TextTable

    table = TextTable(torch.zeros(2, 1, 4), torch.ones(2, 1), {"": 0, "a": 1}, empty=0)
    objective = InstructObjective(table, InstructConfig())
    drop_text, drop_image = objective.dropout_masks(200_000, torch.Generator().manual_seed(0),
                                                    torch.device("cpu"))
    both = (drop_text & drop_image).float().mean().item()
    text_only = (drop_text & ~drop_image).float().mean().item()
    image_only = (drop_image & ~drop_text).float().mean().item()
    for value in (both, text_only, image_only):
        assert abs(value - 0.05) < 0.003


def test_edit_cli_writes_a_recipe_and_reproduce_is_bit_identical(tiny_instruct, tmp_path):
    root, _, result = tiny_instruct
    record = read_triples(root / "edits")[0]
    source = root / "edits" / record["source"]
    out = tmp_path / "edited.png"
    assert run(["edit", str(source), record["instruction"], "--model", str(result.model_dir),
                "--image-guidance", "1.5", "--guidance", "4", "--steps", "3", "--seed", "7",
                "--out", str(out)]) == 0
    recipe = read_recipe(out)
    assert recipe["kind"] == "edit" and recipe["instruction"] == record["instruction"]
    assert recipe["image_guidance_scale"] == 1.5 and recipe["guidance_scale"] == 4.0
    assert recipe["seed"] == 7 and recipe["model_hash"] and len(recipe["source_image_hash"]) == 64
    assert run(["reproduce", str(out), "--init-image", str(source)]) == 0
    # without the source, or with another image, reproduction is refused in one line
    assert run(["reproduce", str(out)]) == 2
    other = root / "edits" / read_triples(root / "edits")[1]["source"]
    assert run(["reproduce", str(out), "--init-image", str(other)]) == 2


def test_python_api_edit_matches_the_cli_and_depends_on_the_source(tiny_instruct):
    import imagesynth.api

    root, _, result = tiny_instruct
    records = read_triples(root / "edits")
    first = root / "edits" / records[0]["source"]
    second = root / "edits" / records[1]["source"]
    pipe = imagesynth.api.load(str(result.model_dir))
    a = imagesynth.api.edit(first, "make it blue", model=pipe, seed=1, num_steps=3)
    b = imagesynth.api.edit(first, "make it blue", model=pipe, seed=[0, 1], num_steps=3)
    assert a.images[0].tobytes() == b.images[1].tobytes()  # batch-independent
    with torch.no_grad():  # a trained source weight makes the result depend on the source
        pipe.denoiser.network.unet.conv_in.weight[:, -3:].normal_(0, 0.5)
    c = imagesynth.api.edit(first, "make it blue", model=pipe, seed=1, num_steps=3)
    d = imagesynth.api.edit(second, "make it blue", model=pipe, seed=1, num_steps=3)
    assert c.images[0].tobytes() != d.images[0].tobytes()


def _error_line(capsys) -> str:
    return capsys.readouterr().err.strip()


def test_bad_inputs_give_one_line_errors_naming_the_field(tiny_instruct, tmp_path, capsys):
    root, base_model, result = tiny_instruct
    source = root / "edits" / read_triples(root / "edits")[0]["source"]
    model = str(result.model_dir)
    big = tmp_path / "big.png"
    Image.new("RGB", (32, 32), "white").save(big)
    cases = [
        (["edit", str(big), "make it blue", "--model", model], "image"),
        (["edit", str(source), "  ", "--model", model], "instruction"),
        (["edit", str(source), "make it blue", "--model", str(base_model)], "model"),
        (["edit", str(source), "make it blue", "--model", model, "--guidance", "-1"],
         "guidance"),
        (["edit", str(source), "make it blue", "--model", model, "--image-guidance", "-1"],
         "image_guidance"),
    ]
    for argv, field in cases:
        assert run(argv + ["--out", str(tmp_path / "x.png")]) == 2
        line = _error_line(capsys)
        assert "\n" not in line and f"{field}:" in line, (argv, line)


def test_library_errors_name_the_field(tiny_instruct):
    from imagesynth.editing import edit_image
    from imagesynth.pipeline import load_pipeline

    root, base_model, result = tiny_instruct
    pipe = load_pipeline(str(result.model_dir))
    with pytest.raises(InputImageError) as error:
        edit_image(pipe, Image.new("RGB", (20, 16)), "make it blue")
    assert error.value.field == "image"
    with pytest.raises(ConfigError) as error:
        edit_image(load_pipeline(str(base_model)), Image.new("RGB", (16, 16)), "make it blue")
    assert error.value.field == "model"
    # an instruction model still generates from text alone (a zero source)
    assert pipe("a red circle", num_steps=2).images[0].size == (16, 16)
    assert np.asarray(pipe("a red circle", num_steps=2).images[0]).shape == (16, 16, 3)
