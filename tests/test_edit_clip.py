"""`edit-clip`: GAN inversion, the StyleCLIP latent edit, StyleGAN-NADA, recipes and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imagesynth.cli import run
from imagesynth.errors import ConfigError, IntegrityError
from imagesynth.families.gan import load_gan
from imagesynth.guided.edit_clip import (EditClipConfig, edit_clip, invert, nada_finetune,
                                         reproduce_edit_clip)
from imagesynth.guided.gan_drawer import layer_rows
from imagesynth.io.pngmeta import read_recipe
from imagesynth.registry import write_model_folder
from test_guided_gan import tiny_gan_folder


@pytest.fixture(autouse=True)
def shared_text_encoder(monkeypatch, minilm):
    """The GAN reads captions with MiniLM: reuse the loaded one."""
    import imagesynth.text
    from imagesynth.guided import gan_drawer

    monkeypatch.setattr(imagesynth.text, "load_text_encoder", lambda *a, **k: minilm)
    gan_drawer._text_encoder.cache_clear()
    yield
    gan_drawer._text_encoder.cache_clear()


@pytest.fixture(scope="module")
def gan_folder(tmp_path_factory):
    return tiny_gan_folder(tmp_path_factory.mktemp("gan") / "model", seed=1)


@pytest.fixture(scope="module")
def scorer(shapes_folder, tmp_path_factory, minilm):
    """A tiny CLIP (5 steps): any differentiable score will do: (folder, scorer)."""
    from imagesynth.clip import load_clip
    from imagesynth.families.clip import train_clip

    result = train_clip(shapes_folder(32), tmp_path_factory.mktemp("clip"), preset="tiny",
                        overrides=dict(max_steps=5, eval_every=5), show_progress=False)
    return str(result.model_dir), load_clip(str(result.model_dir), text_encoder=minilm)


@pytest.fixture(scope="module")
def scene(gan_folder, tmp_path_factory, minilm):
    """A 16 px image the tiny GAN can make: its sample for another seed (ground-truth w known)."""
    gan = load_gan(gan_folder)
    condition = minilm(["a red circle"]).pooled.float()
    image = gan.sample(1, [torch.Generator().manual_seed(99)], condition)
    array = ((image[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(array).save(path)
    return path


def _config(scene, gan_folder, scorer_folder, **overrides):
    settings = dict(image=str(scene), prompt="a blue square", gan=str(gan_folder),
                    source="a red circle", scorer=scorer_folder, invert_steps=60,
                    invert_candidates=4, steps=20, learning_rate=0.1, cutouts=2)
    return EditClipConfig(**{**settings, **overrides})


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def _pixels(path) -> torch.Tensor:
    return _tensor(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("latent, clip_weight", [("w", 0.0), ("w+", 0.0), ("w", 0.5)])
def test_inversion_reduces_the_pixel_error(scene, gan_folder, scorer, latent, clip_weight):
    gan = load_gan(gan_folder)
    config = _config(scene, gan_folder, scorer[0], latent=latent, invert_steps=100,
                     invert_clip_weight=clip_weight)
    drawer, trace = invert(gan, _pixels(scene), config, scorer[1], "a red circle")
    assert len(trace) == 101
    assert trace[-1] < 0.3 * trace[0]  # from the best candidate, not just any start
    expected_shape = (1, 32) if latent == "w" else (1, 8, 32)
    assert tuple(drawer.w.shape) == expected_shape


def test_edit_raises_the_clip_score_and_the_l2_weight_bounds_the_move(scene, gan_folder,
                                                                      scorer):
    gan = load_gan(gan_folder)
    moves = {}
    for weight in (0.0, 0.3, 3.0):
        result = edit_clip(_config(scene, gan_folder, scorer[0], l2_weight=weight), gan=gan,
                           scorer=scorer[1])
        m = result.measured
        moves[weight] = m["w_distance"]
        assert m["w_distance"] == pytest.approx(
            float((result.w_edited - result.w_inverted).norm()), rel=1e-5)
        if weight == 0.0:
            assert m["score_after"] > m["score_before"] + 0.01  # toward the target text
        else:
            # lambda |w - w_inv|^2 <= the CLIP loss it bought, and that loss is below 5 (pi^2/2)
            assert weight * m["w_distance"] ** 2 <= 5.0
    assert moves[0.0] > moves[0.3] > moves[3.0]


def test_layers_restrict_the_edit_to_those_w_plus_rows(scene, gan_folder, scorer):
    gan = load_gan(gan_folder)
    synthesis = gan.generator.synthesis
    assert layer_rows("torgb", synthesis) == [1, 4, 7]  # 4 px toRGB, then one per block
    assert layer_rows("conv", synthesis) == [0, 2, 3, 5, 6]
    assert layer_rows("all", synthesis) is None and layer_rows(" 6,1 ", synthesis) == [1, 6]
    for spec in ("8", "-1", "x", ","):
        with pytest.raises(ConfigError) as info:
            layer_rows(spec, synthesis)
        assert info.value.field == "layers"
    result = edit_clip(_config(scene, gan_folder, scorer[0], layers="torgb", loss="directional"),
                       gan=gan, scorer=scorer[1])
    w_inv, w_edit = result.w_inverted, result.w_edited
    assert w_inv.shape == (1, 32) and w_edit.shape == (1, 8, 32)  # lifted from w to w+
    moved = (w_edit - w_inv[:, None]).abs().amax(dim=2)[0]
    assert [bool(m > 0) for m in moved] == [i in (1, 4, 7) for i in range(8)]
    assert result.measured["w_distance"] == pytest.approx(float((w_edit - w_inv[:, None]).norm()),
                                                          rel=1e-5)


def test_same_seed_same_bytes_and_reproduce(scene, gan_folder, scorer, tmp_path, capsys):
    config = _config(scene, gan_folder, scorer[0], latent="w+", seed=5)
    paths = [edit_clip(config, scorer=scorer[1]).save(tmp_path / f"{name}.png")
             for name in ("a", "b")]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    other = edit_clip(_config(scene, gan_folder, scorer[0], latent="w+", seed=6),
                      scorer=scorer[1]).save(tmp_path / "c.png")
    assert other.read_bytes() != paths[0].read_bytes()
    recipe = read_recipe(paths[0])
    assert recipe["kind"] == "edit-clip" and recipe["edit_clip"]["latent"] == "w+"
    replayed = reproduce_edit_clip(recipe, scorer=scorer[1])
    assert replayed.tobytes() == Image.open(paths[0]).convert("RGB").tobytes()
    recipe["model_hash"] = "0" * 64
    with pytest.raises(IntegrityError) as info:
        reproduce_edit_clip(recipe, scorer=scorer[1])
    assert info.value.field == "gan"


def test_nada_changes_every_sample_and_writes_a_loadable_gan(scene, gan_folder, scorer,
                                                             tmp_path, minilm):
    gan = load_gan(gan_folder)
    config = _config(scene, gan_folder, scorer[0], prompt=None,
                     nada=("a red circle", "a blue square"), nada_steps=30, nada_lr=0.01)
    tuned, losses = nada_finetune(gan, scorer[1], *config.nada, config)
    assert sum(losses[-5:]) < sum(losses[:5])  # the directional loss falls
    condition = minilm(["a green triangle"]).pooled.float().expand(4, -1)
    generators = lambda: [torch.Generator().manual_seed(s) for s in range(4)]  # noqa: E731
    before, after = gan.sample(4, generators(), condition), tuned.sample(4, generators(), condition)
    assert all((a - b).abs().mean() > 1e-3 for a, b in zip(before, after))
    assert torch.equal(tuned.generator.mapping.layers[0].weight,
                       gan.generator.mapping.layers[0].weight)  # only synthesis is tuned

    result = edit_clip(config, gan=gan, scorer=scorer[1], nada_out=tmp_path / "nada")
    assert result.w_edited is None and result.measured["nada_loss"] is not None
    saved = load_gan(result.generator_dir)
    assert torch.equal(saved.sample(4, generators(), condition), after)
    block = json.loads((result.generator_dir / "config.json").read_text())["nada"]
    assert (block["source"], block["target"]) == ("a red circle", "a blue square")
    # the edit is the inverted image rendered by the adapted generator
    w = result.w_inverted
    expected = ((saved.generator.synthesis(w) + 1) / 2).clamp(0, 1)
    got = _tensor(result.image)
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6


def test_cli_edit_clip_writes_outputs_and_reproduces(scene, gan_folder, scorer, tmp_path,
                                                      capsys):
    out, inverted = tmp_path / "edit.png", tmp_path / "inverted.png"
    code = run(["edit-clip", str(scene), "a blue square", "--gan", str(gan_folder),
                "--source", "a red circle", "--scorer", scorer[0], "--invert-steps", "20",
                "--invert-candidates", "2", "--steps", "5", "--cutouts", "2", "--out", str(out),
                "--inverted", str(inverted)])
    assert code == 0, capsys.readouterr().err
    assert "CLIP" in capsys.readouterr().out
    assert Image.open(inverted).size == (16, 16)
    assert run(["reproduce", str(out)]) == 0
    assert "identical" in capsys.readouterr().out
    code = run(["edit-clip", str(scene), "--gan", str(gan_folder), "--nada", "a red circle",
                "a blue square", "--nada-steps", "2", "--nada-batch", "2", "--invert-steps", "5",
                "--scorer", scorer[0], "--cutouts", "2", "--out", str(tmp_path / "n.png"),
                "--nada-out", str(tmp_path / "nada")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "nada" / "config.json").is_file()


@pytest.mark.parametrize("change, field", [
    (dict(prompt="a blue square", nada=("a", "b")), "prompt"),
    (dict(prompt=None), "prompt"),
    (dict(prompt=None, nada=("a",)), "nada"),
    (dict(latent="z"), "latent"),
    (dict(gan=None), "gan"),
    (dict(l2_weight=-1.0), "l2_weight"),
    (dict(invert_candidates=0), "invert_candidates"),
    (dict(loss="clip"), "loss"),
    (dict(loss="directional", source=None), "source"),
])
def test_bad_configs_name_the_field(scene, gan_folder, change, field):
    with pytest.raises(ConfigError) as info:
        _config(scene, gan_folder, "shapes-clip", **change)
    assert info.value.field == field


def test_bad_inputs_are_one_line_errors_naming_the_field(scene, gan_folder, scorer, tmp_path,
                                                         capsys):
    big = tmp_path / "big.png"
    Image.new("RGB", (32, 32), "white").save(big)
    vae = write_model_folder(tmp_path / "vae", {"x": torch.zeros(1)}, {"family": "autoencoder"},
                             "# not a GAN\n")
    cases = [
        ([str(big), "a blue circle", "--gan", str(gan_folder)], "image:"),
        ([str(scene), "a blue circle", "--gan", str(vae)], "gan:"),
        ([str(scene), "--gan", str(gan_folder)], "prompt:"),
        ([str(scene), "a blue circle", "--gan", str(gan_folder), "--nada-out",
          str(tmp_path / "x")], "nada_out:"),
    ]
    for args, field in cases:
        code = run(["edit-clip", *args, "--scorer", scorer[0], "--out", str(tmp_path / "o.png")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and field in err, (args, err)
    assert not (tmp_path / "o.png").exists()
