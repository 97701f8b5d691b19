"""`imagesynth sample`, `interpolate` and `reproduce` across families, and their one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imagesynth.cli import run


@pytest.fixture(autouse=True)
def shared_text_encoder(monkeypatch, minilm):
    """Commands load MiniLM for prompts; reuse the session's to keep tests fast."""
    import imagesynth.text

    monkeypatch.setattr(imagesynth.text, "load_text_encoder", lambda *a, **k: minilm)


@pytest.fixture(scope="module")
def models(shapes_folder, tmp_path_factory, minilm):
    """A tiny GAN, a tiny flow, and the bundled vector VAE, by path or name."""
    from imagesynth.families.flow import train_flow
    from imagesynth.families.gan import train_gan

    root = tmp_path_factory.mktemp("families")
    folder = shapes_folder(64, size=16)
    gan = train_gan(folder, root / "gan", preset="tiny", overrides={"max_steps": 6},
                    text_encoder=minilm, show_progress=False).model_dir
    flow = train_flow(folder, root / "flow", preset="tiny", overrides={"max_steps": 6},
                      show_progress=False).model_dir
    return {"gan": str(gan), "flow": str(flow), "vae": "shapes-v32", "ar": "shapes-ar",
            "data": folder}


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("family, extra", [("gan", ["--prompt", "a red circle"]),
                                           ("flow", ["--temperature", "0.8"]),
                                           ("vae", ["--prior", "normal"]),
                                           ("ar", ["--prompt", "a red circle", "--top-k", "8"])])
def test_same_seed_same_bytes_batch_independent_and_reproducible(models, tmp_path, capsys,
                                                                 family, extra):
    model = models[family]
    assert run(["sample", "--model", model, "--n", "3", "--seed", "5", *extra,
                "--out", str(tmp_path / "batch")]) == 0
    assert run(["sample", "--model", model, "--n", "1", "--seed", "6", *extra,
                "--out", str(tmp_path / "alone")]) == 0
    batch = sorted((tmp_path / "batch").glob("*-6.png"))
    alone = sorted((tmp_path / "alone").glob("*-6.png"))
    assert len(batch) == len(alone) == 1
    assert np.array_equal(_pixels(batch[0]), _pixels(alone[0]))
    capsys.readouterr()
    assert run(["reproduce", str(batch[0])]) == 0
    assert "identical" in capsys.readouterr().out


def test_truncation_changes_gan_samples_and_is_recorded(models, tmp_path):
    base = ["sample", "--model", models["gan"], "--prompt", "a red circle", "--n", "1"]
    assert run(base + ["--out", str(tmp_path / "full.png")]) == 0
    assert run(base + ["--truncation", "0.3", "--out", str(tmp_path / "trunc.png")]) == 0
    assert not np.array_equal(_pixels(tmp_path / "full.png"), _pixels(tmp_path / "trunc.png"))
    from imagesynth.io.pngmeta import read_recipe

    assert read_recipe(tmp_path / "trunc.png")["sample"]["truncation"] == 0.3


@pytest.mark.parametrize("argv, field", [
    (["sample", "--model", "{gan}", "--prompt", "x", "--truncation", "0"], "truncation"),
    (["sample", "--model", "{gan}", "--prompt", "x", "--truncation", "1.5"], "truncation"),
    (["sample", "--model", "{flow}", "--temperature", "0"], "temperature"),
    (["sample", "--model", "{flow}", "--temperature", "-1"], "temperature"),
    (["sample", "--model", "{flow}", "--truncation", "0.5"], "truncation"),
    (["sample", "--model", "{flow}", "--prompt", "a red circle"], "prompt"),
    (["sample", "--model", "{gan}"], "prompt"),
    (["sample", "--model", "shapes-clip"], "model"),
    (["sample", "--model", "shapes-f4"], "model"),
    (["interpolate", "--model", "shapes", "0", "1"], "model"),
    (["interpolate", "--model", "{ar}", "0", "1"], "model"),
    (["sample", "--model", "{ar}", "--top-p", "0"], "top_p"),
    (["sample", "--model", "{ar}", "--temperature", "0"], "temperature"),
    (["interpolate", "--model", "{vae}", "0"], "end"),
    (["interpolate", "--model", "{vae}", "0", "1", "--frames", "1"], "frames"),
    (["interpolate", "--model", "{vae}", "0", "--add", "on the left"], "add"),
])
def test_bad_input_is_a_one_line_error_naming_the_field(models, tmp_path, capsys, argv, field):
    argv = [a.format(**models) for a in argv] + ["--out", str(tmp_path / "o.gif" if argv[0] ==
                                                              "interpolate" else tmp_path)]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"{field}:" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("family", ["gan", "flow", "vae"])
def test_interpolation_writes_a_gif_and_a_sheet_whose_ends_are_the_end_points(models, tmp_path,
                                                                            family):
    extra = ["--prompt", "a red circle"] if family == "gan" else []
    out = tmp_path / "walk.gif"
    assert run(["interpolate", "--model", models[family], "3", "4", "--frames", "5",
                "--scale", "1", *extra, "--out", str(out)]) == 0
    gif = Image.open(out)
    assert gif.n_frames == 5
    sheet = _pixels(out.with_suffix(".png"))
    side = sheet.shape[0]
    assert sheet.shape[1] == 5 * side
    assert run(["sample", "--model", models[family], "--n", "1", "--seed", "3", *extra,
                "--out", str(tmp_path / "s3.png")]) == 0
    assert np.abs(sheet[:, :side].astype(int) - _pixels(tmp_path / "s3.png")).max() <= 1


def test_latent_arithmetic_moves_along_a_caption_direction(models, tmp_path):
    out = tmp_path / "arith.gif"
    assert run(["interpolate", "--model", "shapes-v32", "2", "--add", "on the left",
                "--subtract", "on the right", "--data", str(models["data"]), "--frames", "4",
                "--scale", "1", "--out", str(out)]) == 0
    sheet = _pixels(out.with_suffix(".png")).astype(int)
    side = sheet.shape[0]
    assert np.abs(sheet[:, :side] - sheet[:, -side:]).max() > 20  # the walk changes the image


def test_interpolating_an_encoded_image_starts_near_it(models, tmp_path):
    assert run(["sample", "--model", "shapes-v32", "--n", "1", "--seed", "9",
                "--out", str(tmp_path / "a.png")]) == 0
    out = tmp_path / "walk.gif"
    assert run(["interpolate", "--model", "shapes-v32", str(tmp_path / "a.png"), "1",
                "--frames", "3", "--scale", "1", "--out", str(out)]) == 0
    first = _pixels(out.with_suffix(".png"))[:, :32].astype(float)
    assert np.abs(first - _pixels(tmp_path / "a.png")).mean() < 8  # a VAE round trip
