"""The translation family: pairing, tasks, losses on the shared loop, determinism, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from imagesynth.cli import run
from imagesynth.errors import ConfigError
from imagesynth.families.translate import (PRESETS, CycleGANObjective, Pix2PixObjective,
                                           TranslateConfig, TranslateModel, chroma_error,
                                           evaluate_translation, gan_loss, jitter,
                                           load_translate, train_translate, translate,
                                           translate_net_config)
from imagesynth.families.translate_data import (PairedImages, edges, grey,
                                                load_translation_data)
from imagesynth.io.pngmeta import read_recipe
from imagesynth.nets.translate import (PatchDiscriminator, TranslateNetConfig, TranslationNets,
                                       UNetGenerator, patch_receptive_field)


def shapes(count: int, size: int = 16, seed: int = 0) -> list[np.ndarray]:
    """A square on a flat background, colours and place from the seed."""
    rng = np.random.default_rng(seed)
    pictures = []
    for _ in range(count):
        image = np.empty((size, size, 3), dtype=np.uint8)
        image[:] = rng.integers(0, 256, size=3)
        side = int(rng.integers(size // 4, size // 2))
        y, x = rng.integers(0, size - side, size=2)
        image[y:y + side, x:x + side] = rng.integers(0, 256, size=3)
        pictures.append(image)
    return pictures


def swap(image: np.ndarray) -> np.ndarray:
    """Domain B: red and blue exchanged (a deterministic A -> B mapping)."""
    return image[..., ::-1].copy()


def write_folder(root, pictures, names=None, records=None):
    """images/NAME.png plus a captions.jsonl with a `unified` key per image."""
    (root / "images").mkdir(parents=True)
    names = names or [f"e{i:03d}" for i in range(len(pictures))]
    lines = []
    for i, (name, picture) in enumerate(zip(names, pictures)):
        Image.fromarray(picture).save(root / "images" / f"{name}.png")
        record = {"file": f"images/{name}.png", "caption": f"shape {name}",
                  "unified": f"U{name.upper()}", **(records[i] if records else {})}
        lines.append(json.dumps(record))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def swap_folders(tmp_path_factory):
    """Paired folders A (shapes) and B (their colour swap), 48 images of 16 px."""
    root = tmp_path_factory.mktemp("swap")
    pictures = shapes(48)
    return (write_folder(root / "a", pictures),
            write_folder(root / "b", [swap(p) for p in pictures]))


@pytest.fixture(scope="module")
def pix2pix_run(swap_folders, tmp_path_factory):
    a, b = swap_folders
    out = tmp_path_factory.mktemp("p2p") / "run"
    result = train_translate(b, out, data_a=a, preset="tiny",
                             overrides={"max_steps": 80, "log_every": 5, "eval_every": 40},
                             show_progress=False)
    return result, out


def test_loss_falls_on_an_easy_paired_mapping(pix2pix_run):
    result, out = pix2pix_run
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    l1 = [entry["l1"] for entry in logs if "l1" in entry]
    assert len(l1) == 16 and all("loss_d" in e for e in logs if "l1" in e)
    assert np.mean(l1[-2:]) < 0.6 * l1[0]
    figures = result.metrics
    assert figures["count"] > 0
    assert figures["l1"] < figures["identity_l1"]  # beats copying the input
    assert figures["psnr"] > figures["identity_psnr"]


def test_save_load_round_trip_reproduces_the_card_figures(pix2pix_run, swap_folders):
    result, _ = pix2pix_run
    model = load_translate(result.model_dir)
    config = json.loads((result.model_dir / "config.json").read_text())
    assert config["family"] == "translate" and config["translate"]["gan_loss"] == "bce"
    assert set(model.state_dict()) == {k for k in model.state_dict() if k.startswith("g_ab.")}
    a, b = swap_folders
    data = load_translation_data(b, a, task="translate", paired=True, image_size=16)
    assert evaluate_translation(model, data.held_out) == config["eval"] == result.metrics
    assert "| l1 |" in (result.model_dir / "CARD.md").read_text()


def test_translate_cli_is_deterministic_and_records_its_recipe(pix2pix_run, swap_folders,
                                                                 tmp_path):
    result, _ = pix2pix_run
    a, _ = swap_folders
    inputs = [str(a / "images" / f"e00{i}.png") for i in range(3)]
    for name in ("one", "two"):
        assert run(["translate", *inputs, "--model", str(result.model_dir),
                    "--out", str(tmp_path / name)]) == 0
    for i in range(3):
        assert (tmp_path / "one" / f"e00{i}.png").read_bytes() == \
            (tmp_path / "two" / f"e00{i}.png").read_bytes()
    recipe = read_recipe(tmp_path / "one" / "e001.png")
    assert recipe["kind"] == "translate" and recipe["seed"] is None
    assert len(recipe["model_hash"]) == 64 and len(recipe["input_sha256"]) == 64
    # dropout noise: same seed, same bytes; image i's noise does not depend on its batch
    assert run(["translate", *inputs, "--model", str(result.model_dir), "--seed", "5",
                "--out", str(tmp_path / "noisy")]) == 0
    assert run(["translate", inputs[1], "--model", str(result.model_dir), "--seed", "6",
                "--out", str(tmp_path / "alone")]) == 0
    noisy = np.asarray(Image.open(tmp_path / "noisy" / "e001.png"))
    assert np.array_equal(noisy, np.asarray(Image.open(tmp_path / "alone" / "e001.png")))
    assert read_recipe(tmp_path / "noisy" / "e001.png")["seed"] == 6
    assert not np.array_equal(noisy, np.asarray(Image.open(tmp_path / "one" / "e001.png")))


def test_pix2pix_refuses_unpaired_folders(tmp_path, capsys):
    a = write_folder(tmp_path / "a", shapes(12), [f"a{i}" for i in range(12)])
    b = write_folder(tmp_path / "b", shapes(12, seed=1), [f"b{i}" for i in range(12)])
    with pytest.raises(ConfigError) as error:
        train_translate(b, tmp_path / "run", data_a=a, preset="tiny", show_progress=False)
    assert error.value.field == "pair_by" and "cyclegan" in error.value.fix
    assert run(["train", "translate", "--data-a", str(a), "--data-b", str(b),
                "--preset", "tiny", "--out", str(tmp_path / "cli")]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "pair_by" in message


def test_pairing_by_a_caption_field_and_by_a_selection(tmp_path):
    pictures = shapes(10)
    # one folder holding both styles (as `imagesynth data emoji` builds), keyed by `unified`
    both = write_folder(tmp_path / "both", pictures + [swap(p) for p in pictures],
                        [f"x{i}" for i in range(10)] + [f"y{i}" for i in range(10)],
                        [{"style": "s1", "unified": f"K{i}"} for i in range(10)]
                        + [{"style": "s2", "unified": f"K{i}"} for i in range(10)])
    data = load_translation_data(both, both, task="translate", paired=True, image_size=16,
                                 pair_by="unified", select_a="style=s1", select_b="style=s2",
                                 held_out_fraction=0.0)
    assert data.counts["pairs"] == 10
    assert torch.equal(data.train_b, data.train_a.flip(1))  # B is A with R and B swapped
    with pytest.raises(ConfigError) as error:  # both styles share each key
        load_translation_data(both, both, task="translate", paired=True, image_size=16,
                              pair_by="unified")
    assert error.value.field == "pair_by"
    # a task needs no pairing: repeated keys only keep both styles of an emoji on one side
    colour = load_translation_data(both, None, task="colorize", paired=True, image_size=16,
                                   pair_by="unified", held_out_fraction=0.5)
    assert 0 < len(colour.held_out) < 20 and len(colour.held_out) % 2 == 0
    assert torch.equal(colour.held_out.a, grey(colour.held_out.b))
    with pytest.raises(ConfigError) as error:
        TranslateConfig(select_a="style")
    assert error.value.field == "select_a"


def test_size_mismatch_between_paired_folders_names_the_field(tmp_path):
    a = write_folder(tmp_path / "a", shapes(8, size=16))
    b = write_folder(tmp_path / "b", shapes(8, size=24))
    with pytest.raises(ConfigError) as error:
        load_translation_data(b, a, task="translate", paired=True, image_size=16)
    assert error.value.field == "data_b" and "16x16" in error.value.message
    assert "\n" not in str(error.value)


def test_colorize_and_edges2image_make_their_input_side(swap_folders):
    _, b = swap_folders
    colour = load_translation_data(b, None, task="colorize", paired=True, image_size=16,
                                   held_out_fraction=0.0)
    a = colour.train_a.long()
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 1], a[:, 2])
    luma = (0.299 * colour.train_b[:, 0].double() + 0.587 * colour.train_b[:, 1].double()
            + 0.114 * colour.train_b[:, 2].double()).round()
    assert torch.equal(a[:, 0].double(), luma)
    sketch = load_translation_data(b, None, task="edges2image", paired=True, image_size=16,
                                   held_out_fraction=0.0)
    assert set(sketch.train_a.unique().tolist()) == {0, 255}
    assert torch.equal(sketch.train_a, edges(sketch.train_b))
    with pytest.raises(ConfigError) as error:
        load_translation_data(b, b, task="colorize", paired=True, image_size=16)
    assert error.value.field == "data_a"
    with pytest.raises(ConfigError) as error:
        load_translation_data(b, None, task="translate", paired=True, image_size=16)
    assert error.value.field == "data_a"


def test_colorize_trains_from_one_folder_and_reports_colour_error(swap_folders, tmp_path,
                                                                   capsys):
    _, b = swap_folders
    assert run(["train", "translate", "--data", str(b), "--task", "colorize", "--preset",
                "tiny", "--steps", "4", "--out", str(tmp_path / "run")]) == 0
    assert "chroma_error" in capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert {"chroma_error", "identity_chroma_error"} <= set(config["eval"])
    card = (tmp_path / "run" / "model" / "CARD.md").read_text()
    assert f"--data-b {b} --method pix2pix --task colorize" in card and "--steps 4" in card
    model = load_translate(tmp_path / "run" / "model")
    assert model.settings.task == "colorize" and model.settings.method == "pix2pix"
    # --derive-input greys a colour image before colourising it
    picture = b / "images" / "e000.png"
    assert run(["translate", str(picture), "--model", str(tmp_path / "run" / "model"),
                "--derive-input", "--out", str(tmp_path / "derived")]) == 0
    assert run(["translate", str(picture), "--model", str(tmp_path / "run" / "model"),
                "--out", str(tmp_path / "raw")]) == 0
    assert (tmp_path / "derived" / "e000.png").read_bytes() != \
        (tmp_path / "raw" / "e000.png").read_bytes()


def test_an_interrupted_run_resumes_to_the_same_bytes(swap_folders, tmp_path):
    a, b = swap_folders
    settings = TranslateConfig(method="cyclegan")  # the most random draws per step
    whole = train_translate(b, tmp_path / "whole", data_a=a, settings=settings, preset="tiny",
                            overrides={"max_steps": 4}, show_progress=False)
    first = train_translate(b, tmp_path / "split", data_a=a, settings=settings, preset="tiny",
                            overrides={"max_steps": 4}, show_progress=False, stop_after=2)
    assert first.steps == 2 and first.stopped == "time_budget"
    second = train_translate(b, tmp_path / "split", data_a=a, settings=settings, preset="tiny",
                             overrides={"max_steps": 4}, show_progress=False)
    assert second.steps == 4
    # the weights, bit for bit (the file's metadata order is the safetensors writer's choice)
    want, got = (load_file(run.model_dir / "model.safetensors") for run in (whole, second))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_cyclegan_trains_without_pairs(tmp_path):
    a = write_folder(tmp_path / "a", shapes(20), [f"a{i}" for i in range(20)])
    b = write_folder(tmp_path / "b", [swap(p) for p in shapes(14, seed=3)],
                     [f"b{i}" for i in range(14)])
    settings = TranslateConfig(method="cyclegan")
    result = train_translate(b, tmp_path / "run", data_a=a, settings=settings, preset="tiny",
                             overrides={"max_steps": 6, "log_every": 3}, show_progress=False)
    assert result.steps == 6 and result.metrics == {}  # no pairs: nothing to measure against
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"cycle", "identity", "loss_d", "loss_g"} <= set(logs[-1])
    model = load_translate(result.model_dir)
    assert model.settings.gan_loss == "lsgan" and model.net_config.generator == "resnet"
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert translate(model, x, "b2a").shape == x.shape
    with pytest.raises(ConfigError) as error:
        TranslateConfig(method="cyclegan", adversarial=False)
    assert error.value.field == "adversarial"


def test_a_run_folder_is_not_resumed_with_other_settings(swap_folders, tmp_path):
    a, b = swap_folders
    train_translate(b, tmp_path / "run", data_a=a, preset="tiny", overrides={"max_steps": 2},
                    show_progress=False)
    with pytest.raises(ConfigError) as error:
        train_translate(b, tmp_path / "run", data_a=a, preset="tiny",
                        settings=TranslateConfig(adversarial=False),
                        overrides={"max_steps": 2}, show_progress=False)
    assert error.value.field == "out"


class Identity(torch.nn.Module):
    def forward(self, x, noise=None):
        return x


class SwapRB(torch.nn.Module):
    def forward(self, x, noise=None):
        return x.flip(1)


def _model(task="translate", method="pix2pix"):
    settings = TranslateConfig(task=task, method=method)
    return TranslateModel(translate_net_config("tiny", settings), settings)


def test_evaluate_translation_on_known_models():
    pictures = torch.from_numpy(np.stack(shapes(6))).permute(0, 3, 1, 2).contiguous()
    pairs = PairedImages(pictures, pictures.flip(1).contiguous(), tuple("abcdef"))
    model = _model()
    model.g_ab = Identity()
    embed = lambda x: x.flatten(1)  # noqa: E731 - any embedding: identity must match exactly
    figures = evaluate_translation(model, pairs, embed=embed)
    for name in ("l1", "psnr", "cosine"):
        assert figures[name] == figures[f"identity_{name}"]
    want = (pairs.a.double() - pairs.b.double()).abs().mean().item() / 255
    assert figures["l1"] == pytest.approx(want, rel=1e-12)
    model.g_ab = SwapRB()  # the true mapping: no error at all
    figures = evaluate_translation(model, pairs, embed=embed)
    assert figures["l1"] == 0 and figures["psnr"] == 100 and figures["cosine"] == pytest.approx(1)


def test_chroma_error_of_grey_against_pure_red_is_the_red_chroma():
    red = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    red[:, 0] = 255
    assert chroma_error(grey(red), red) == pytest.approx((0.168736 + 0.5) / 2, abs=1e-6)
    colorize = _model(task="colorize")
    colorize.g_ab = Identity()
    figures = evaluate_translation(colorize, (grey(red), red))
    assert figures["chroma_error"] == figures["identity_chroma_error"] > 0.33


def test_discriminator_gradient_is_that_of_its_own_loss_alone():
    torch.manual_seed(0)
    settings = TranslateConfig(augment=False)
    net = translate_net_config("tiny", settings, dropout_layers=0)
    nets = TranslationNets(net, two_way=False, discriminators=True)
    a = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    b = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    loss, metrics = Pix2PixObjective(settings)(nets, (a, b), torch.Generator().manual_seed(1))
    x, y = a.float() / 127.5 - 1, b.float() / 127.5 - 1
    fake = nets.g_ab(x)
    D = nets.d_b
    loss_d = 0.5 * (gan_loss(D(torch.cat([x, y], 1)), True, "bce")
                    + gan_loss(D(torch.cat([x, fake.detach()], 1)), False, "bce"))
    loss_g = 100 * (fake - y).abs().mean() + gan_loss(D(torch.cat([x, fake], 1)), True, "bce")
    d_params, g_params = list(D.parameters()), list(nets.g_ab.parameters())
    for got, want in zip(torch.autograd.grad(loss, d_params, retain_graph=True),
                         torch.autograd.grad(loss_d, d_params, retain_graph=True)):
        assert torch.allclose(got, want, atol=1e-6)
    for got, want in zip(torch.autograd.grad(loss, g_params),
                         torch.autograd.grad(loss_g, g_params)):
        assert torch.allclose(got, want, atol=1e-5)
    assert metrics["loss_d"] == pytest.approx(loss_d.item(), rel=1e-5)


def test_cyclegan_generators_get_no_gradient_from_the_discriminator_losses():
    torch.manual_seed(0)
    settings = TranslateConfig(method="cyclegan", augment=False, lambda_identity=0.0)
    nets = TranslationNets(translate_net_config("tiny", settings), True, True)
    a = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    objective = CycleGANObjective(settings, a.flip(1).contiguous())
    loss, metrics = objective(nets, a, torch.Generator().manual_seed(2))
    # by hand with the same B draw: D_A's gradient is that of its LSGAN loss alone
    rows = torch.randint(3, (3,), generator=torch.Generator().manual_seed(2))
    x, y = a.float() / 127.5 - 1, a.flip(1)[rows].float() / 127.5 - 1
    fake_a = nets.g_ba(y)
    loss_da = 0.5 * (((nets.d_a(x) - 1) ** 2).mean() + (nets.d_a(fake_a.detach()) ** 2).mean())
    for got, want in zip(torch.autograd.grad(loss, list(nets.d_a.parameters())),
                         torch.autograd.grad(loss_da, list(nets.d_a.parameters()))):
        assert torch.allclose(got, want, atol=1e-6)
    cycle = (nets.g_ba(nets.g_ab(x)) - x).abs().mean() + (nets.g_ab(fake_a) - y).abs().mean()
    assert metrics["cycle"] == pytest.approx(cycle.item(), rel=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_patchgan_receptive_field_matches_the_formula(layers):
    config = TranslateNetConfig(image_size=64, d_channels=4, d_layers=layers)
    D = PatchDiscriminator(3, config)
    # instance norm's statistics span the image; the patch is the convolutions' geometry
    for index, layer in enumerate(D.body):
        if isinstance(layer, torch.nn.InstanceNorm2d):
            D.body[index] = torch.nn.Identity()
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    logits = D(x)
    centre = logits.shape[-1] // 2
    (grad,) = torch.autograd.grad(logits[0, 0, centre, centre], x)
    rows = grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == patch_receptive_field(layers)
    assert patch_receptive_field(3) == 70  # pix2pix's 70x70 PatchGAN


def test_unet_is_per_sample_and_its_noise_comes_from_its_generators():
    torch.manual_seed(0)
    net = UNetGenerator(PRESETS["tiny"])
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        batch = net(x)
        assert torch.allclose(batch[1:2], net(x[1:2]), atol=1e-6)  # no batch statistics
        g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
        noisy = net(x, noise=[g(1), g(2), g(3)])
        assert torch.allclose(noisy[1:2], net(x[1:2], noise=[g(2)]), atol=1e-6)
        assert not torch.allclose(noisy, batch)


def test_jitter_moves_both_images_of_a_pair_alike():
    x = torch.rand(5, 3, 16, 16)
    first, second = jitter([x, x.clone()], torch.Generator().manual_seed(0))
    assert torch.equal(first, second) and not torch.equal(first, x)
