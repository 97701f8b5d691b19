"""ControlNet end to end: data with conditions -> train on the shared loop -> model folder ->
generate with control -> reproduce bit-identically; and the one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from imagesynth.cli import run
from imagesynth.data import ShapesConfig, build_shapes_dataset
from imagesynth.errors import ConfigError, DataError
from imagesynth.families.controlnet import (ControlInput, controlled_denoiser, load_controlnet,
                                            train_controlnet)
from imagesynth.families.diffusion import train_diffusion
from imagesynth.io.pngmeta import read_recipe, save_png


@pytest.fixture(autouse=True)
def shared_text_encoder(monkeypatch, minilm):
    """CLI commands load the model's text encoder; reuse the session's to keep tests fast."""
    import imagesynth.text

    monkeypatch.setattr(imagesynth.text, "load_text_encoder", lambda *a, **k: minilm)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, minilm):
    """A tiny base model and a layout ControlNet trained on it for a few steps."""
    root = tmp_path_factory.mktemp("control")
    build_shapes_dataset(root / "data", ShapesConfig(count=16, size=16, seed=0,
                                                     with_conditions=True))
    base = train_diffusion(root / "data", root / "base", preset="tiny",
                           overrides=dict(max_steps=2, batch_size=4), show_progress=False,
                           text_encoder=minilm).model_dir
    result = train_controlnet(str(base), root / "data", "layout", root / "run",
                              overrides=dict(max_steps=3, batch_size=4, checkpoint_every=2),
                              show_progress=False, text_encoder=minilm)
    return root, base, result


def test_the_data_records_its_condition_maps(trained):
    root, _, _ = trained
    records = [json.loads(line) for line in (root / "data" / "captions.jsonl").read_text()
               .splitlines()]
    for record in records:
        for kind in ("layout", "edges"):
            path = root / "data" / record["conditions"][kind]
            assert Image.open(path).size == (16, 16)
    from imagesynth.data.folder import CaptionedImageFolder

    folder = CaptionedImageFolder(root / "data")  # the maps are not taken for training images
    assert len(folder.items) == 16 and not folder.problems
    assert "--with-conditions" in (root / "data" / "DATASET.md").read_text()


def test_training_writes_a_controlnet_folder_that_only_the_controlnet_changed(trained):
    root, base, result = trained
    assert result.steps == 3
    folder = result.model_dir
    config = json.loads((folder / "config.json").read_text())
    from imagesynth.io.files import sha256_file

    assert config["base_model"]["sha256"] == sha256_file(base / "model.safetensors")
    assert config["family"] == "controlnet" and config["condition"] == "layout"
    card = (folder / "CARD.md").read_text()
    assert config["base_model"]["sha256"] in card and "images per second" in card
    network, loaded_config, weights_hash = load_controlnet(str(folder))
    assert loaded_config["steps"] == 3 and len(weights_hash) == 64
    # Trained: the zero convolutions moved off zero.
    assert network.controlnet_mid_block.weight.abs().sum() > 0
    # The base model's weights were frozen: the checkpoint's copy equals the model folder's.
    from imagesynth.io.checkpoint import load_weights
    from imagesynth.train.state import checkpoint_dirs

    checkpoint = load_weights(checkpoint_dirs(root / "run" / "checkpoints")[-1] /
                              "model.safetensors")
    original = load_weights(base / "model.safetensors")
    assert all(torch.equal(checkpoint[f"base.network.{k}"], v) for k, v in original.items())


def test_half_precision_copy_of_a_controlnet_loads(trained, tmp_path):
    from imagesynth.registry import half_precision_copy

    half = half_precision_copy(str(trained[2].model_dir), tmp_path / "half")
    network, config, _ = load_controlnet(str(half))
    assert config["family"] == "controlnet" and next(network.parameters()).dtype == torch.float32


def test_generate_with_control_then_reproduce_is_identical(trained, tmp_path, capsys):
    root, base, result = trained
    layout = root / "data" / "conditions" / "layout" / "03.png"
    out = tmp_path / "controlled.png"
    assert run(["generate", "a red circle", "--model", str(base), "--steps", "3",
                "--seed", "4", "--control-image", str(layout), "--control-model",
                str(result.model_dir), "--control-scale", "0.8", "--control-end", "0.7",
                "--out", str(out)]) == 0
    recipe = read_recipe(out)
    (control,) = recipe["controls"]
    assert control["scale"] == 0.8 and control["start"] == 0.0 and control["end"] == 0.7
    assert control["condition"] == "layout" and len(control["image_hash"]) == 64
    assert run(["reproduce", str(out), "--control-image", str(layout)]) == 0
    assert "identical" in capsys.readouterr().out
    assert run(["reproduce", str(out)]) == 2  # the map is needed, like --init-image
    other = root / "data" / "conditions" / "layout" / "05.png"
    assert run(["reproduce", str(out), "--control-image", str(other)]) != 0
    assert "control_image" in capsys.readouterr().err


def test_control_changes_the_image_and_scale_zero_does_not(trained, minilm):
    from imagesynth.pipeline import load_pipeline

    root, base, result = trained
    pipe = load_pipeline(str(base), text_encoder=minilm)
    layout = root / "data" / "conditions" / "layout" / "03.png"
    plain = pipe("a red circle", seed=2, num_steps=3).images[0]
    off = pipe("a red circle", seed=2, num_steps=3,
               controls=[ControlInput(layout, str(result.model_dir), 0.0)]).images[0]
    on = pipe("a red circle", seed=2, num_steps=3,
              controls=[ControlInput(layout, str(result.model_dir), 5.0)]).images[0]
    assert off.tobytes() == plain.tobytes()
    assert on.tobytes() != plain.tobytes()


def test_a_controlnet_for_other_base_weights_is_refused(trained):
    root, base, result = trained
    from imagesynth.pipeline import load_denoiser
    from imagesynth.registry import Registry

    entry = Registry().get(str(base))
    denoiser = load_denoiser(Registry().load_state_dict(entry), entry.config())
    layout = root / "data" / "conditions" / "layout" / "03.png"
    with pytest.raises(ConfigError, match="trained for base model") as error:
        controlled_denoiser(denoiser, [ControlInput(layout, str(result.model_dir))],
                            torch.tensor([80.0, 1.0, 0.0]), model_hash="0" * 64, image_size=16)
    assert error.value.field == "control_model"


def test_training_refusals_name_their_field(trained, shapes_folder, tmp_path, minilm):
    _, base, _ = trained
    with pytest.raises(ConfigError) as error:
        train_controlnet(str(base), shapes_folder(8), "depth", tmp_path / "a")
    assert error.value.field == "condition"
    with pytest.raises(DataError, match="with-conditions") as error:
        train_controlnet(str(base), shapes_folder(8), "layout", tmp_path / "b",
                         text_encoder=minilm)
    assert error.value.field == "condition"
    assert run(["train", "controlnet", "--model", str(base), "--data", str(shapes_folder(8)),
                "--condition", "depth", "--out", str(tmp_path / "c")]) == 2


def test_control_map_command_writes_edges_and_scribbles(trained, tmp_path):
    root, _, _ = trained
    image = root / "data" / "images" / "03.png"
    for kind in ("edges", "scribble"):
        assert run(["control-map", kind, str(image), "--out", str(tmp_path / f"{kind}.png")]) == 0
        assert Image.open(tmp_path / f"{kind}.png").size == (16, 16)
    assert run(["control-map", "depth", str(image), "--out", str(tmp_path / "x.png")]) == 2


@pytest.mark.parametrize("field, config", [
    ("control_image[0]", {"control_image": ["/etc/hosts"], "control_model": ["/tmp"]}),
    ("control_model[0]", {"control_image": ["upload:" + "a" * 32], "control_model": ["/tmp"]}),
    ("lora", {"lora": ["x.safetensors"]})])
def test_studio_jobs_refuse_file_paths_of_controlnets_and_loras(field, config):
    from imagesynth.serve.jobs import parse_job

    body = {"kind": "generate", "config": {"prompt": "a red circle", "model": "shapes", **config}}
    with pytest.raises(ConfigError) as error:
        parse_job(body, {"shapes"})
    assert error.value.field == field
