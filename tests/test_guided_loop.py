"""The CLIP-guided loop end to end with two tiny CLIPs: scores, determinism, recipes, CLI, errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from imagesynth.clip import load_clip
from imagesynth.families.clip import train_clip
from imagesynth.cli import run
from imagesynth.errors import ConfigError, IntegrityError
from imagesynth.guided import DreamConfig, dream, reproduce_from_recipe, save_gif
from imagesynth.io.pngmeta import read_recipe


@pytest.fixture(scope="session")
def tiny_clips(tmp_path_factory, minilm):
    """Two tiny CLIPs (different seeds) on a small ShapesWorld folder: scorer A and held-out B."""
    from imagesynth.data import ShapesConfig, build_shapes_dataset

    root = tmp_path_factory.mktemp("dream")
    build_shapes_dataset(root / "shapes", ShapesConfig(count=200, size=16, seed=0))
    folders = []
    for seed, steps in ((0, 40), (1, 5)):  # B only has to be a different model, not a good one
        result = train_clip(root / "shapes", root / f"run{seed}", preset="tiny",
                            overrides=dict(max_steps=steps, eval_every=steps, seed=seed),
                            show_progress=False)
        folders.append(str(result.model_dir))
    return folders, [load_clip(f, text_encoder=minilm) for f in folders]


def _config(folders, **overrides):
    settings = dict(prompt="a red circle", drawer="pixels", steps=12, width=16, height=16,
                    cutouts=4, scorer=folders[0], eval_every=4, frame_every=4)
    return DreamConfig(**{**settings, **overrides})


def _bytes(path):
    return path.read_bytes()


@pytest.mark.parametrize("drawer", ["pixels", "fourier", "pixelart"])
def test_every_drawer_raises_scorer_a(tiny_clips, drawer):
    folders, (scorer_a, scorer_b) = tiny_clips
    result = dream(_config(folders, drawer=drawer, steps=20, cells=4), scorer=scorer_a,
                   held_out_scorer=scorer_b)
    assert result.image.size == (16, 16)
    assert [row["step"] for row in result.history] == [0, 4, 8, 12, 16, 20]
    assert result.history[-1]["score"] > result.history[0]["score"]
    assert "held_out_score" in result.history[-1]
    first, last = result.history[0], result.history[-1]
    assert result.adversarial == (last["score"] > first["score"]
                                  and last["held_out_score"] < first["held_out_score"])


def test_same_seed_same_bytes_other_seed_other_image(tiny_clips, tmp_path):
    folders, (scorer_a, _) = tiny_clips
    paths = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        paths.append(dream(_config(folders, seed=seed), scorer=scorer_a).save(tmp_path / f"{name}.png"))
    assert _bytes(paths[0]) == _bytes(paths[1])
    assert Image.open(paths[0]).tobytes() != Image.open(paths[2]).tobytes()


def test_recipe_round_trip_and_reproduce(tiny_clips, tmp_path):
    folders, (scorer_a, _) = tiny_clips
    config = _config(folders, drawer="pixelart", cells=4, palette=("#ff0000", "#ffffff"))
    result = dream(config, scorer=scorer_a)
    path = result.save(tmp_path / "out.png")
    recipe = read_recipe(path)
    assert recipe["kind"] == "dream" and recipe["seed"] == 0 and recipe["size"] == [16, 16]
    assert recipe["dream"]["palette"] == ["#ff0000", "#ffffff"]
    again = reproduce_from_recipe(recipe, scorer=scorer_a)
    assert again.tobytes() == Image.open(path).convert("RGB").tobytes()
    with pytest.raises(IntegrityError):  # another model is refused, not silently used
        reproduce_from_recipe(recipe, scorer=tiny_clips[1][1])
    with pytest.raises(ConfigError):
        reproduce_from_recipe({"kind": "txt2img"})


def test_editing_moves_toward_the_edit_text(tiny_clips, tmp_path):
    from imagesynth.data import render_scene
    from imagesynth.data.shapes import Scene, ShapeObject

    folders, (scorer_a, _) = tiny_clips
    init = tmp_path / "init.png"
    scene = Scene(size=16, objects=(ShapeObject("red", "circle", 4.0, 4.0, 8.0),))
    render_scene(scene).save(init)
    result = dream(_config(folders, init_image=str(init), edit_to="a blue circle", steps=16,
                           learning_rate=0.05), scorer=scorer_a)
    assert result.history[-1]["score"] > result.history[0]["score"]
    assert result.recipe["input_hashes"][str(init)]
    init.write_bytes(b"changed")
    with pytest.raises(IntegrityError):
        reproduce_from_recipe(result.recipe, scorer=scorer_a)


def test_frames_and_gif(tiny_clips, tmp_path):
    folders, (scorer_a, _) = tiny_clips
    result = dream(_config(folders), scorer=scorer_a, keep_frames=True, frames_dir=tmp_path / "f")
    assert len(result.frames) == 4  # steps 0, 4, 8, 12
    assert sorted(p.name for p in (tmp_path / "f").iterdir())[0] == "frame_00000.png"
    gif = Image.open(save_gif(result.frames, tmp_path / "run.gif"))
    assert gif.format == "GIF" and gif.n_frames == 4


def test_cli_writes_png_and_gif(tiny_clips, tmp_path, capsys):
    folders, _ = tiny_clips
    out, gif = tmp_path / "cli.png", tmp_path / "cli.gif"
    code = run(["dream", "a blue square | blurry:-0.3", "--scorer", folders[0],
                "--held-out-scorer", folders[1], "--steps", "6", "--size", "16", "--cutouts", "2",
                "--drawer", "fourier", "--out", str(out), "--gif", str(gif), "--frame-every", "3"])
    assert code == 0, capsys.readouterr().err
    assert read_recipe(out)["dream"]["held_out_scorer"] == folders[1]
    assert "held-out" in capsys.readouterr().out and gif.is_file()
    assert run(["reproduce", str(out)]) == 0  # the generic reproduce command replays dreams
    assert "identical" in capsys.readouterr().out


@pytest.mark.parametrize("args,field", [
    (["x:1 | y:-1"], "prompt"),
    (["x", "--drawer", "crayons"], "drawer"),
    (["x", "--drawer", "pixelart", "--size", "30"], "size"),
    (["x", "--steps", "0"], "steps"),
    (["x", "--size", "big"], "size"),
    (["x", "--edit-to", "y"], "edit_to"),
    (["x", "--init-colour", "blurple"], "init_colour"),
    (["x", "--init-colour", "white", "--init-image", "x.png"], "init_colour"),
    (["x", "--init-noise", "-1"], "init_noise"),
    (["x", "--lr-schedule", "linear"], "lr_schedule"),
    (["x", "--init-candidates", "0"], "init_candidates"),
    (["x", "--init-candidates", "4", "--init-colour", "white"], "init_candidates"),
])
def test_cli_bad_input_is_one_line_naming_the_field(tiny_clips, tmp_path, capsys, args, field):
    code = run(["dream", *args, "--scorer", tiny_clips[0][0], "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"{field}:" in err


def test_unreadable_init_image_is_named(tiny_clips, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = run(["dream", "x", "--init-image", str(bad), "--scorer", tiny_clips[0][0],
                "--steps", "1", "--size", "16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "init_image" in err and len(err.splitlines()) == 1


def test_init_colour_starts_plain_and_init_noise_varies_it_per_seed(tiny_clips):
    """A white canvas start renders white; added noise is seeded: same seed same start, not other."""
    folders, (scorer_a, _) = tiny_clips
    starts = {}
    for name, noise, seed in (("plain", 0.0, 0), ("a", 0.5, 0), ("b", 0.5, 0), ("c", 0.5, 1)):
        frames = []
        dream(_config(folders, steps=1, init_colour="white", init_noise=noise, seed=seed),
              scorer=scorer_a, on_frame=lambda step, frame: frames.append(frame))
        starts[name] = frames[0].tobytes()
    assert set(starts["plain"]) == {255}
    assert starts["a"] == starts["b"] != starts["c"] and starts["a"] != starts["plain"]


def test_cosine_lr_schedule_is_recorded_and_settles_the_image(tiny_clips):
    """Cosine decay ends near lr 0: the last step barely moves the image, unlike a constant lr."""
    folders, (scorer_a, _) = tiny_clips
    moved = {}
    for schedule in ("constant", "cosine"):
        result = dream(_config(folders, steps=8, frame_every=1, lr_schedule=schedule),
                       scorer=scorer_a, keep_frames=True)
        before, last = (torch.tensor(list(frame.tobytes()), dtype=torch.float)
                        for frame in result.frames[-2:])
        moved[schedule] = float((last - before).abs().mean())
        assert result.recipe["dream"]["lr_schedule"] == schedule
    assert moved["cosine"] < 0.2 * moved["constant"]


def test_init_candidates_start_from_the_random_start_scorer_a_rates_best(tiny_clips):
    """The first candidate is the single-start init; the chosen start scores the maximum of all."""
    folders, (scorer_a, _) = tiny_clips
    from imagesynth.guided.drawers import build_drawer
    from imagesynth.guided.loop import _seeds, _Targets
    from imagesynth.guided.prompts import parse_prompts

    targets = _Targets(scorer_a, parse_prompts("a red circle"), 16, 16)
    generator = torch.Generator().manual_seed(_seeds(5)[0])
    with torch.no_grad():  # the candidates dream() draws, in the same order from the same seed
        scores = [targets.score(scorer_a, build_drawer("pixels", 16, 16, generator).render())
                  for _ in range(6)]
    assert max(scores) > scores[0]  # otherwise the test could not tell the two apart
    single = dream(_config(folders, steps=1, seed=5), scorer=scorer_a)
    best = dream(_config(folders, steps=1, seed=5, init_candidates=6), scorer=scorer_a)
    assert single.history[0]["score"] == pytest.approx(scores[0], abs=1e-6)
    assert best.history[0]["score"] == pytest.approx(max(scores), abs=1e-6)
    assert best.recipe["dream"]["init_candidates"] == 6
    again = dream(_config(folders, steps=1, seed=5, init_candidates=6), scorer=scorer_a)
    assert again.image.tobytes() == best.image.tobytes()


def test_decoder_drawer_recipe_pins_the_vector_vae_and_reproduce_checks_it(tiny_clips, tmp_path):
    from imagesynth.nets.autoencoder import Autoencoder, autoencoder_config, model_config
    from imagesynth.registry import write_model_folder

    folders, (scorer_a, _) = tiny_clips

    def write_vae(seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = Autoencoder(autoencoder_config("tiny-v8"))
        return write_model_folder(tmp_path / "vae", vae.state_dict(), model_config(vae.config),
                                  "# test vae\n")

    folder = str(write_vae(0))
    config = _config(folders, drawer="decoder", decoder=folder, steps=3, init_candidates=3)
    result = dream(config, scorer=scorer_a)
    assert result.image.size == (16, 16)
    digest = result.recipe["decoder"]["model_hash"]
    assert len(digest) == 64 and result.recipe["dream"]["init_candidates"] == 3
    assert reproduce_from_recipe(result.recipe, scorer=scorer_a).tobytes() == \
        result.image.tobytes()
    write_vae(1)  # other weights at the same path
    with pytest.raises(IntegrityError) as info:
        reproduce_from_recipe(result.recipe, scorer=scorer_a)
    assert info.value.field == "decoder"
