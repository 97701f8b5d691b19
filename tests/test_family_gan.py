"""The GAN family: losses reach the right player, seeds, batches, truncation, save/load, errors."""

from __future__ import annotations

import pytest
import torch

from imagesynth.errors import ConfigError
from imagesynth.families.gan import (GANModel, GANObjective, GANObjectiveConfig, diff_augment,
                                     gan_config, load_gan, train_gan)
from imagesynth.nets.gan import GAN, ModulatedConv2d


@pytest.fixture(scope="module")
def tiny_run(shapes_folder, tmp_path_factory, minilm):
    folder = shapes_folder(64, size=16)
    out = tmp_path_factory.mktemp("gan") / "run"
    result = train_gan(folder, out, preset="tiny", overrides={"max_steps": 12, "eval_every": 6},
                       text_encoder=minilm, show_progress=False)
    return result, folder


def _batch(config, n=4):
    images = torch.randint(0, 256, (n, 3, config.image_size, config.image_size),
                           dtype=torch.uint8)
    return images, torch.zeros(n, 1, dtype=torch.long)


def test_discriminator_gradient_is_that_of_its_own_loss_alone():
    torch.manual_seed(0)
    config = gan_config("tiny", condition_dim=6)
    model = GAN(config)
    table = torch.randn(1, 6)
    settings = GANObjectiveConfig(r1_gamma=0.0, augment=())
    images, choices = _batch(config)
    loss, metrics = GANObjective(table, settings)(model, (images, choices),
                                                  torch.Generator().manual_seed(1))
    d_params = list(model.discriminator.parameters())
    got = torch.autograd.grad(loss, d_params)
    # by hand with the same draws: the G term must add nothing to D's gradient
    generator = torch.Generator().manual_seed(1)
    torch.rand(4, generator=generator)
    z = torch.randn(4, config.z_dim, generator=generator)
    torch.rand((), generator=generator)  # the lazy-R1 coin
    c = table[[0, 0, 0, 0]]
    real = images.float() / 127.5 - 1
    D = model.discriminator
    loss_d = (torch.nn.functional.softplus(D(model.generator(z, c).detach(), c)).mean()
              + torch.nn.functional.softplus(-D(real, c)).mean())
    want = torch.autograd.grad(loss_d, d_params)
    assert metrics["loss_d"] == pytest.approx(loss_d.item(), rel=1e-5)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6)


def test_generator_gradient_equals_the_non_saturating_loss_gradient():
    torch.manual_seed(0)
    config = gan_config("tiny", condition_dim=0)
    model = GAN(config)
    settings = GANObjectiveConfig(r1_gamma=0.0, augment=())
    loss, _ = GANObjective(torch.empty(0), settings)(model, _batch(config),
                                                      torch.Generator().manual_seed(3))
    g_params = list(model.generator.parameters())
    got = torch.autograd.grad(loss, g_params, allow_unused=True)
    # by hand: the same z (first draws after the caption pick), loss_g = softplus(-D(G(z)))
    generator = torch.Generator().manual_seed(3)
    torch.rand(4, generator=generator)
    z = torch.randn(4, config.z_dim, generator=generator)
    loss_g = torch.nn.functional.softplus(-model.discriminator(model.generator(z))).mean()
    want = torch.autograd.grad(loss_g, g_params, allow_unused=True)
    for a, b in zip(got, want):
        if b is None:
            continue
        assert torch.allclose(a, b, atol=1e-6)


def test_r1_penalty_is_the_squared_gradient_norm_on_reals():
    torch.manual_seed(0)
    config = gan_config("tiny", condition_dim=0)
    model = GAN(config)
    images, choices = _batch(config)
    settings = GANObjectiveConfig(r1_gamma=2.0, r1_every=1, augment=())
    _, metrics = GANObjective(torch.empty(0), settings)(model, (images, choices),
                                                         torch.Generator().manual_seed(0))
    real = (images.float() / 127.5 - 1).requires_grad_(True)
    (gradient,) = torch.autograd.grad(model.discriminator(real).sum(), real)
    assert metrics["r1"] == pytest.approx(gradient.square().sum(dim=(1, 2, 3)).mean().item(),
                                          rel=1e-4)


def test_diff_augment_is_seeded_per_sample_and_differentiable():
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    settings = GANObjectiveConfig(augment=("translation", "cutout", "color"))
    a = diff_augment(x, settings, torch.Generator().manual_seed(5))
    b = diff_augment(x, settings, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    c = diff_augment(x, settings, torch.Generator().manual_seed(6))
    assert not torch.equal(a, c)


def test_modulated_conv_matches_weight_modulation_with_demodulation():
    torch.manual_seed(0)
    layer = ModulatedConv2d(4, 5, w_dim=3)
    x, w = torch.randn(2, 4, 6, 6), torch.randn(2, 3)
    got = layer(x, w)
    styles = layer.affine(w)
    for i in range(2):  # StyleGAN2 eq. 1 and 3 on the weight itself, sample by sample
        weight = layer.weight * layer.gain * styles[i][None, :, None, None]
        weight = weight * torch.rsqrt(weight.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        want = torch.nn.functional.conv2d(x[i:i + 1], weight, padding=1)
        assert torch.allclose(got[i:i + 1], want, atol=1e-5)


def test_trained_tiny_gan_samples_deterministically_and_batch_independently(tiny_run, minilm):
    result, _ = tiny_run
    model = load_gan(result.model_dir)
    condition = torch.cat([minilm(["a red circle"]).pooled] * 3).float()
    gens = lambda: [torch.Generator().manual_seed(s) for s in (7, 8, 9)]  # noqa: E731
    first = model.sample(3, gens(), condition)
    again = model.sample(3, gens(), condition)
    assert torch.equal(first, again)
    alone = model.sample(1, [torch.Generator().manual_seed(8)], condition[1:2])
    assert torch.equal(((first[1:2] + 1) * 127.5).round(), ((alone + 1) * 127.5).round())
    assert first.shape == (3, 3, 8, 8) and first.min() >= -1 and first.max() <= 1


def test_truncation_pulls_samples_toward_the_condition_s_mean(tiny_run, minilm):
    model = load_gan(tiny_run[0].model_dir)
    condition = torch.cat([minilm(["a blue square"]).pooled] * 8).float()
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(8)]  # noqa: E731
    centre = model.mean_w(condition[:1])
    spread = {psi: (model.latent(8, gens(), condition, psi) - centre).norm(dim=1).mean().item()
              for psi in (1.0, 0.5)}
    assert spread[0.5] == pytest.approx(spread[1.0] * 0.5, rel=1e-4)


@pytest.mark.parametrize("psi", [0.0, -0.5, 1.5])
def test_truncation_outside_zero_one_names_the_field(tiny_run, minilm, psi):
    model = load_gan(tiny_run[0].model_dir)
    with pytest.raises(ConfigError) as info:
        model.sample(1, [torch.Generator()], minilm(["a red circle"]).pooled.float(), psi)
    assert info.value.field == "truncation"


def test_a_conditional_gan_needs_a_condition(tiny_run):
    model = load_gan(tiny_run[0].model_dir)
    with pytest.raises(ConfigError) as info:
        model.sample(1, [torch.Generator()])
    assert info.value.field == "condition"


def test_encode_inverts_an_image_of_the_generator(tiny_run, minilm):
    model = load_gan(tiny_run[0].model_dir)
    condition = minilm(["a red circle"]).pooled.float()
    target_w = model.latent(1, [torch.Generator().manual_seed(1)], condition)
    target = model.decode(target_w)
    start = (model.decode(model.mean_w(condition)) - target).square().mean()
    w = model.encode(target, condition, steps=150)
    assert (model.decode(w) - target).square().mean() < 0.25 * start


def test_model_folder_records_the_family_and_loads_identically(tiny_run, minilm):
    result, _ = tiny_run
    assert (result.model_dir / "CARD.md").is_file()
    import json

    config = json.loads((result.model_dir / "config.json").read_text())
    assert config["family"] == "gan" and config["steps"] == 12
    first, second = load_gan(result.model_dir), load_gan(result.model_dir)
    condition = minilm(["a red circle"]).pooled.float()
    assert torch.equal(first.sample(1, [torch.Generator().manual_seed(0)], condition),
                       second.sample(1, [torch.Generator().manual_seed(0)], condition))
    assert isinstance(first, GANModel) and first.has_latent


def test_too_little_data_names_the_data_field(shapes_folder, tmp_path, minilm):
    with pytest.raises(ConfigError) as info:
        train_gan(shapes_folder(16, size=16), tmp_path / "run", preset="tiny", text_encoder=minilm,
                  show_progress=False)
    assert info.value.field == "data"
