"""PNG recipes: the A1111 chunk parses like A1111 parses it, the JSON chunk round-trips."""

from __future__ import annotations

import pytest
from PIL import Image

from imagesynth.errors import InputImageError
from imagesynth.io.pngmeta import a1111_parameters, parse_a1111_parameters, read_recipe, save_png

RECIPE = {"prompt": "a red circle, on the left", "negative_prompt": "blurry",
          "steps": 20, "sampler": "heun", "guidance_scale": 3.5, "seed": 7, "size": [32, 32],
          "model_hash": "ab12cd34", "model": "shapes", "versions": {"imagesynth": "0.1.0"},
          "sampler_config": {"S_churn": 0.0, "rho": 7.0}, "seeds": [7]}


def test_recipe_round_trips_through_png(tmp_path):
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    path = save_png(image, tmp_path / "out.png", RECIPE)
    recipe = read_recipe(path)
    assert recipe["schema"] == 1
    assert {k: recipe[k] for k in RECIPE} == RECIPE
    with Image.open(path) as reread:
        assert reread.getpixel((0, 0)) == (1, 2, 3)


def test_a1111_text_matches_the_a1111_grammar():
    text = a1111_parameters(RECIPE)
    assert text.splitlines()[0] == "a red circle, on the left"
    assert text.splitlines()[1] == "Negative prompt: blurry"
    parsed = parse_a1111_parameters(text)
    assert parsed["prompt"] == RECIPE["prompt"] and parsed["negative_prompt"] == "blurry"
    assert parsed["Steps"] == "20" and parsed["CFG scale"] == "3.5" and parsed["Seed"] == "7"
    assert parsed["Size"] == "32x32" and parsed["Model"] == "shapes"


def test_foreign_a1111_png_is_read(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "cat\nNegative prompt: dog\nSteps: 30, Sampler: Euler a, "
                                "CFG scale: 7, Seed: 1, Size: 512x512")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png", pnginfo=info)
    parsed = read_recipe(tmp_path / "a.png")["a1111"]
    assert parsed["Sampler"] == "Euler a" and parsed["prompt"] == "cat"


def test_prompt_can_be_stripped_and_missing_recipe_is_an_error(tmp_path):
    path = save_png(Image.new("RGB", (4, 4)), tmp_path / "p.png", RECIPE, include_prompt=False)
    assert "prompt" not in read_recipe(path)
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(InputImageError, match="no generation recipe"):
        read_recipe(tmp_path / "plain.png")


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    path = save_png(Image.new("RGB", (2, 2)), tmp_path / "perm.png", RECIPE)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a1111_chunk_names_the_sampler_as_a1111_does(tmp_path):
    from imagesynth.io.metadata_import import read_generation_settings

    path = save_png(Image.new("RGB", (4, 4)), tmp_path / "x.png",
                    {"prompt": "cat", "seed": 1, "steps": 5, "sampler": "euler_ancestral"})
    text = Image.open(path).text["parameters"]
    assert "Sampler: Euler a" in text
    assert read_generation_settings(path.read_bytes()).settings["sampler"] == "euler_ancestral"
