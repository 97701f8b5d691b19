"""The GAN drawer (Big Sleep analogue): renders, gradients, starts, the loop, recipes and errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from imagesynth.cli import run
from imagesynth.config import to_dict
from imagesynth.errors import ConfigError, IntegrityError
from imagesynth.families.gan import GANModel, gan_config, load_gan
from imagesynth.guided import DreamConfig, GANDrawer, build_drawer, dream, reproduce_from_recipe
from imagesynth.guided.gan_drawer import num_layers, synthesise
from imagesynth.io.pngmeta import read_recipe
from imagesynth.registry import write_model_folder


@pytest.fixture(autouse=True)
def shared_text_encoder(monkeypatch, minilm):
    """The drawer reads the prompt with the GAN's text encoder: reuse the loaded MiniLM."""
    import imagesynth.text
    from imagesynth.guided import gan_drawer

    monkeypatch.setattr(imagesynth.text, "load_text_encoder", lambda *a, **k: minilm)
    gan_drawer._text_encoder.cache_clear()
    yield
    gan_drawer._text_encoder.cache_clear()


def tiny_gan_folder(folder, seed=0, condition_dim=384):
    """A 16 px caption-conditional GAN with random weights, written as a model folder."""
    config = gan_config("tiny", image_size=16, channels=(32, 16, 16), d_channels=(16, 16, 32),
                        condition_dim=condition_dim)
    torch.manual_seed(seed)
    model = GANModel(config)
    return write_model_folder(folder, model.state_dict(), {
        "family": "gan", "gan": to_dict(config), "text_encoder": "minilm"}, "# tiny GAN\n")


@pytest.fixture(scope="module")
def gan_folder(tmp_path_factory):
    return tiny_gan_folder(tmp_path_factory.mktemp("gan") / "model")


@pytest.fixture
def gan(gan_folder):
    return load_gan(gan_folder)


@pytest.fixture(scope="module")
def scorer(shapes_folder, tmp_path_factory, minilm):
    """A tiny CLIP (5 steps): the loop only needs a differentiable score: (folder, scorer)."""
    from imagesynth.clip import load_clip
    from imagesynth.families.clip import train_clip

    result = train_clip(shapes_folder(32), tmp_path_factory.mktemp("clip"), preset="tiny",
                        overrides=dict(max_steps=5, eval_every=5), show_progress=False)
    return str(result.model_dir), load_clip(str(result.model_dir), text_encoder=minilm)


def _drawer(gan, seed=0, **kwargs):
    return build_drawer("gan", 16, 16, torch.Generator().manual_seed(seed), gan=gan,
                        prompt="a red circle", **kwargs)


def test_synthesise_with_one_w_per_layer_is_the_synthesis_network(gan):
    synthesis = gan.generator.synthesis
    w = torch.randn(2, gan.config.w_dim, generator=torch.Generator().manual_seed(1))
    ws = w[:, None].repeat(1, num_layers(synthesis), 1)
    assert num_layers(synthesis) == 2 + 3 * 2  # 16 px: the 4x4 layer and two blocks
    assert torch.allclose(synthesise(synthesis, ws), synthesis(w), atol=1e-6)
    ws[:, -1] += 1.0  # the last row is the final toRGB's style: it must change the image
    assert not torch.allclose(synthesise(synthesis, ws), synthesis(w), atol=1e-3)


@pytest.mark.parametrize("latent", ["w", "w+", "z"])
def test_render_in_range_and_gradients_reach_only_the_latent(gan, latent):
    drawer = _drawer(gan, gan_latent=latent)
    assert isinstance(drawer, GANDrawer)
    parameters = list(drawer.parameters())
    expected = {"w": [(1, 32)], "w+": [(1, 8, 32)], "z": [(1, 16), (1, 384)]}[latent]
    assert [tuple(p.shape) for p in parameters] == expected
    image = drawer.render()
    assert image.shape == (1, 3, 16, 16)
    assert 0 <= float(image.detach().min()) and float(image.detach().max()) <= 1
    (image * torch.linspace(0, 1, 16)).sum().backward()
    for p in parameters:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in gan.parameters())  # the GAN stays frozen


@pytest.mark.parametrize("truncation", [1.0, 0.6])
def test_prompt_start_is_the_gans_own_sample_for_that_generator(gan, minilm, truncation):
    drawer = _drawer(gan, seed=3, gan_truncation=truncation)
    condition = minilm(["a red circle"]).pooled.float()
    # the family's sampler with the same seeded generator: the drawer must start on its sample
    expected = gan.sample(1, [torch.Generator().manual_seed(3)], condition, truncation)
    assert torch.allclose(drawer.render().detach() * 2 - 1, expected, atol=1e-5)
    for latent in ("w+", "z"):
        other = _drawer(gan, seed=3, gan_truncation=truncation, gan_latent=latent)
        assert torch.allclose(other.render().detach() * 2 - 1, expected, atol=1e-5)


def test_same_seed_same_render_other_seed_other_render(gan):
    for start in ("prompt", "random"):
        first, again, other = (_drawer(gan, seed=s, gan_start=start).render().detach()
                               for s in (4, 4, 5))
        assert torch.equal(first, again) and not torch.equal(first, other)
    # a random start does not depend on the prompt
    a = build_drawer("gan", 16, 16, torch.Generator().manual_seed(4), gan=gan, prompt="a",
                     gan_start="random").render()
    b = build_drawer("gan", 16, 16, torch.Generator().manual_seed(4), gan=gan, prompt="b",
                     gan_start="random").render()
    assert torch.equal(a, b)


def test_init_from_image_projects_a_sample_of_the_gan(gan):
    target = _drawer(gan, seed=7).render().detach()
    drawer = _drawer(gan, seed=8)
    start = float((drawer.render().detach() - target).square().mean())
    drawer.init_from_image(target, steps=150)
    assert float((drawer.render().detach() - target).square().mean()) < 0.2 * start


def _config(scorer_folder, gan_folder, **overrides):
    settings = dict(prompt="a red circle", drawer="gan", steps=12, width=16, height=16,
                    cutouts=4, scorer=scorer_folder, eval_every=4, frame_every=4,
                    gan=str(gan_folder) if gan_folder else None, learning_rate=0.1)
    return DreamConfig(**{**settings, **overrides})


@pytest.mark.parametrize("latent, start", [("w", "prompt"), ("w+", "random"), ("z", "random")])
def test_the_loop_raises_the_score(scorer, gan_folder, latent, start):
    result = dream(_config(scorer[0], gan_folder, gan_latent=latent, gan_start=start),
                   scorer=scorer[1])
    assert [row["step"] for row in result.history] == [0, 4, 8, 12]
    assert result.history[-1]["score"] > result.history[0]["score"] + 0.01


def test_dream_is_deterministic_and_reproduces_from_its_recipe(scorer, gan_folder, tmp_path):
    config = _config(scorer[0], gan_folder, steps=4, init_candidates=3, gan_truncation=0.7)
    path = dream(config, scorer=scorer[1]).save(tmp_path / "a.png")
    again = dream(config, scorer=scorer[1]).save(tmp_path / "b.png")
    assert path.read_bytes() == again.read_bytes()
    recipe = read_recipe(path)
    block = recipe["gan"]
    assert block["model"] == str(gan_folder) and len(block["model_hash"]) == 64
    assert (block["latent"], block["start"], block["truncation"]) == ("w", "prompt", 0.7)
    assert recipe["dream"]["gan_truncation"] == 0.7
    replayed = reproduce_from_recipe(recipe, scorer=scorer[1])
    assert replayed.tobytes() == Image.open(path).convert("RGB").tobytes()
    recipe["gan"]["model_hash"] = "0" * 64
    with pytest.raises(IntegrityError) as info:
        reproduce_from_recipe(recipe, scorer=scorer[1])
    assert info.value.field == "gan"


def test_cli_dream_gan_and_reproduce(scorer, gan_folder, tmp_path, capsys):
    out = tmp_path / "cli.png"
    code = run(["dream", "a blue square", "--drawer", "gan", "--gan", str(gan_folder),
                "--gan-latent", "w+", "--scorer", scorer[0], "--steps", "3", "--size", "16",
                "--cutouts", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert read_recipe(out)["gan"]["latent"] == "w+"
    capsys.readouterr()
    assert run(["reproduce", str(out)]) == 0
    assert "identical" in capsys.readouterr().out


@pytest.mark.parametrize("args, field", [
    (["--size", "32"], "size:"),
    (["--gan-latent", "s"], "gan_latent:"),
    (["--gan-truncation", "0"], "gan_truncation:"),
    (["--gan-start", "mean"], "gan_start:"),
])
def test_cli_errors_are_one_line_naming_the_field(scorer, gan_folder, tmp_path, capsys, args,
                                                  field):
    code = run(["dream", "a red circle", "--drawer", "gan", "--gan", str(gan_folder),
                "--scorer", scorer[0], "--size", "16", "--steps", "1",
                "--out", str(tmp_path / "x.png"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and field in err, err
    assert not (tmp_path / "x.png").exists()


def test_a_model_without_a_w_latent_is_refused_naming_gan(scorer, tmp_path, gan):
    folder = write_model_folder(tmp_path / "vae", {"x": torch.zeros(1)},
                                {"family": "autoencoder"}, "# not a GAN\n")
    with pytest.raises(ConfigError) as info:
        dream(_config(scorer[0], folder), scorer=scorer[1])
    assert info.value.field == "gan" and "not a GAN" in info.value.message
    with pytest.raises(ConfigError) as info:
        build_drawer("gan", 16, 16, torch.Generator(), gan=torch.nn.Linear(2, 2))
    assert info.value.field == "gan"
    with pytest.raises(ConfigError) as info:
        dream(_config(scorer[0], None), scorer=scorer[1])
    assert info.value.field == "gan"
    with pytest.raises(ConfigError) as info:  # a conditional GAN's prompt start needs text
        build_drawer("gan", 16, 16, torch.Generator(), gan=gan, prompt=" ")
    assert info.value.field == "prompt"
