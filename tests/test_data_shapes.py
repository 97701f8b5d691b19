"""ShapesWorld: generator, caption grammar, pixel checker, data set build and CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from imagesynth.cli import run
from imagesynth.data.shapes import (HELD_OUT_PAIRS, PALETTE, Scene, ShapeObject, held_out_prompts,
                                    parse_caption, render_scene, sample_scene, scene_satisfies)
from imagesynth.data.shapes_check import check, detect_objects
from imagesynth.data.shapes_dataset import ShapesConfig, build_shapes_dataset, scene_rng
from imagesynth.errors import ConfigError, UsageError


@pytest.fixture(scope="module")
def rendered_scenes():
    """2,000 scenes at 32 px over all colour-shape pairs, with their images."""
    rng = np.random.default_rng(1234)
    scenes = [sample_scene(rng, 32, hold_out=False) for _ in range(2000)]
    return scenes, [render_scene(scene) for scene in scenes]


def test_checker_agrees_with_generator_on_2000_scenes(rendered_scenes):
    scenes, images = rendered_scenes
    agreed = sum(check(image, scene.caption).ok for scene, image in zip(scenes, images))
    assert agreed / len(scenes) >= 0.995


def test_checker_accepts_every_alternative_caption(rendered_scenes):
    scenes, images = rendered_scenes
    pairs = [(image, caption) for scene, image in zip(scenes[:300], images[:300])
             for caption in scene.alternative_captions()]
    agreed = sum(check(image, caption).ok for image, caption in pairs)
    assert agreed / len(pairs) >= 0.995


def test_checker_rejects_captions_of_other_scenes(rendered_scenes):
    # Each image is paired with the caption of the next scene; only pairs the generator's own
    # geometry says are false (not true, not within the ambiguity band) are counted.
    scenes, images = rendered_scenes
    false_pairs = []
    for index, (scene, image) in enumerate(zip(scenes, images)):
        other = scenes[(index + 1) % len(scenes)].caption
        if scene_satisfies(scene, other) is False:
            false_pairs.append((image, other))
    assert len(false_pairs) >= 1900
    rejected = sum(not check(image, caption).ok for image, caption in false_pairs)
    assert rejected / len(false_pairs) >= 0.99


def test_checker_rejects_single_attribute_changes(rendered_scenes):
    # Harder negatives than random captions: swap only the colour, only the shape or flip the
    # position word, and require the matching per-attribute verdict to fail.
    scenes, images = rendered_scenes
    flips = {"left": "right", "right": "left", "top": "bottom", "bottom": "top",
             "to the left of": "to the right of", "to the right of": "to the left of",
             "above": "below", "below": "above"}
    counts = {"colour": [0, 0], "shape": [0, 0], "position": [0, 0]}
    for scene, image in zip(scenes[:600], images[:600]):
        obj = scene.objects[0]
        colour = next(c for c in PALETTE if c != obj.colour
                      and all((c, o.shape) != (o.colour, o.shape) for o in scene.objects))
        shape = next(s for s in ("circle", "square", "triangle") if s != obj.shape
                     and all((obj.colour, s) != (o.colour, o.shape) for o in scene.objects))
        variants = {"colour": Scene(scene.size, (ShapeObject(colour, obj.shape, obj.left,
                                                             obj.top, obj.side),)
                                    + scene.objects[1:], scene.position).caption,
                    "shape": Scene(scene.size, (ShapeObject(obj.colour, shape, obj.left,
                                                            obj.top, obj.side),)
                                   + scene.objects[1:], scene.position).caption}
        if scene.position is not None:
            variants["position"] = Scene(scene.size, scene.objects,
                                         flips[scene.position]).caption
        for attribute, caption in variants.items():
            result = check(image, caption)
            verdict = {"colour": result.colour_ok, "shape": result.shape_ok,
                       "position": result.position_ok}[attribute]
            counts[attribute][0] += not verdict and not result.ok
            counts[attribute][1] += 1
    for attribute, (rejected, total) in counts.items():
        assert total > 100 and rejected / total >= 0.99, attribute


@pytest.mark.parametrize("size", [16, 64])
def test_checker_works_at_other_sizes(size):
    rng = np.random.default_rng(size)
    scenes = [sample_scene(rng, size, hold_out=False) for _ in range(300)]
    agreed = sum(check(render_scene(scene), scene.caption).ok for scene in scenes)
    assert agreed / len(scenes) >= 0.99


def test_checker_tolerates_blur_noise_and_off_white_background():
    # Generated images are never crisp: blur, per-pixel noise and a colour cast.
    rng = np.random.default_rng(7)
    noise = np.random.default_rng(8)
    scenes = [sample_scene(rng, 32, hold_out=False) for _ in range(300)]
    agreed = 0
    for scene in scenes:
        blurred = np.asarray(render_scene(scene).filter(ImageFilter.GaussianBlur(0.8)), float)
        degraded = blurred + noise.normal(0, 8, blurred.shape) + np.array([-8, 4, -6])
        agreed += check(np.clip(degraded, 0, 255).astype(np.uint8), scene.caption).ok
    assert agreed / len(scenes) >= 0.98


def test_measured_geometry_matches_closed_forms():
    # A large shape at 64 px: fill ratio → π/4 (circle), 1 (square), 1/2 (triangle); the
    # coverage-weighted centroid matches the analytic one (triangle: 2/3 down from the apex).
    for shape, fill in (("circle", math.pi / 4), ("square", 1.0), ("triangle", 0.5)):
        obj = ShapeObject("blue", shape, 10.25, 12.5, 28.0)
        (found,) = detect_objects(render_scene(Scene(64, (obj,))))
        assert found.shape == shape
        assert found.fill_ratio == pytest.approx(fill, abs=0.04)
        assert found.centroid == pytest.approx(obj.centroid, abs=0.15)
    (triangle,) = detect_objects(render_scene(Scene(64, (ShapeObject("red", "triangle", 8, 8,
                                                                     40),))))
    assert triangle.skewness == pytest.approx(-2 * math.sqrt(2) / 5, abs=0.03)


def test_check_reports_per_attribute_results():
    scene = Scene(32, (ShapeObject("red", "circle", 2, 10, 12),
                       ShapeObject("blue", "square", 18, 10, 12)), "to the left of")
    image = render_scene(scene)
    assert check(image, "a red circle to the left of a blue square").ok
    wrong_relation = check(image, "a red circle to the right of a blue square")
    assert (wrong_relation.count_ok, wrong_relation.colour_ok, wrong_relation.shape_ok,
            wrong_relation.position_ok, wrong_relation.ok) == (True, True, True, False, False)
    wrong_count = check(image, "a red circle")
    assert not wrong_count.count_ok and not wrong_count.ok and wrong_count.position_ok is None
    wrong_shape = check(image, "a red triangle to the left of a blue square")
    assert wrong_shape.colour_ok and not wrong_shape.shape_ok
    assert check(Image.new("RGB", (32, 32), "white"), "a red circle").count_ok is False


def test_parse_caption_grammar():
    assert parse_caption("A red circle.").objects == (("red", "circle"),)
    spec = parse_caption("an orange circle above a cyan triangle")
    assert spec.objects == (("orange", "circle"), ("cyan", "triangle"))
    assert spec.position == "above"
    assert parse_caption("a black square on the bottom").position == "bottom"
    with pytest.raises(UsageError) as caught:
        parse_caption("a pink hexagon")
    assert caught.value.field == "caption"


def test_generator_never_emits_held_out_pairs_and_captions_are_true():
    rng = np.random.default_rng(3)
    for _ in range(1000):
        scene = sample_scene(rng, 32)
        assert all((o.colour, o.shape) not in HELD_OUT_PAIRS for o in scene.objects)
        assert scene_satisfies(scene, scene.caption) is True
        for a, b in zip(scene.objects, scene.objects[1:]):
            assert (a.colour, a.shape) != (b.colour, b.shape)
        for obj in scene.objects:
            assert 0.25 * 32 - 0.2 <= obj.side <= 0.45 * 32 + 0.2
            assert obj.left >= 1 and obj.left + obj.side <= 31
    prompts = held_out_prompts()
    assert "a purple triangle" in prompts and "a yellow square on the left" in prompts
    assert all(any(f"{c} {s}" in p for c, s in HELD_OUT_PAIRS) for p in prompts)


def test_scene_depends_only_on_seed_and_index():
    assert sample_scene(scene_rng(5, 17)) == sample_scene(scene_rng(5, 17))
    assert sample_scene(scene_rng(5, 17)) != sample_scene(scene_rng(5, 18))


def test_build_is_deterministic_and_complete(tmp_path):
    config = ShapesConfig(count=24, seed=3, val_fraction=0.25)
    first = build_shapes_dataset(tmp_path / "a", config)
    build_shapes_dataset(tmp_path / "b", config)
    lines = (tmp_path / "a" / "captions.jsonl").read_text().splitlines()
    assert lines == (tmp_path / "b" / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 24 and first.train + first.val == 24 and first.val > 0
    record = json.loads(lines[0])
    assert set(record) >= {"file", "caption", "captions", "split", "scene"}
    assert (tmp_path / "a" / record["file"]).read_bytes() == \
        (tmp_path / "b" / record["file"]).read_bytes()
    scene = Scene.from_dict(record["scene"])
    assert scene.caption == record["caption"]
    assert check(Image.open(tmp_path / "a" / record["file"]), record["caption"]).ok
    assert "purple triangle" in (tmp_path / "a" / "DATASET.md").read_text()


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path):
    def interrupt(done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_shapes_dataset(tmp_path / "shapes", ShapesConfig(count=20), progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_build_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(UsageError):
        build_shapes_dataset(tmp_path / "mine", ShapesConfig(count=2))
    with pytest.raises(ConfigError):
        ShapesConfig(size=8)


def test_cli_shapes_builds_and_summarises(tmp_path, capsys):
    code = run(["data", "shapes", "--out", str(tmp_path / "s"), "--count", "12",
                "--no-hold-out"])
    assert code == 0
    assert "written to" in capsys.readouterr().out
    assert len((tmp_path / "s" / "captions.jsonl").read_text().splitlines()) == 12
    assert run(["data", "shapes", "--out", str(tmp_path / "t"), "--size", "8"]) == 2
    assert "size" in capsys.readouterr().err
