"""Drawers, cutouts, prompts and losses of CLIP-guided synthesis (no scorer needed)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imagesynth.errors import ConfigError
from imagesynth.guided import (CutoutConfig, DecoderDrawer, FourierDrawer, PixelArtDrawer,
                               PixelDrawer, augmented_cutouts, build_drawer, parse_prompts)
from imagesynth.guided.drawers import clamp_with_grad
from imagesynth.guided.losses import (directional_loss, prompt_loss, range_loss,
                                      saturation_loss, total_variation_loss)
from imagesynth.guided.prompts import normalised_weights


class TinyDecoder(nn.Module):
    """A stand-in autoencoder decoder: 4-channel latents at 1/4 resolution -> images in [-1, 1]."""

    latent_channels = 4
    downsample_factor = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 3, padding=1)

    def decode(self, latents):
        return torch.tanh(self.conv(F.interpolate(latents, scale_factor=4, mode="nearest")))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _image(h=16, w=16, seed=1):
    return torch.rand(1, 3, h, w, generator=_gen(seed)).clamp(0.05, 0.95)


@pytest.mark.parametrize("name", ["pixels", "fourier", "pixelart"])
def test_drawers_render_in_range_and_get_gradients(name):
    drawer = build_drawer(name, 16, 24, _gen())
    image = drawer.render()
    assert image.shape == (1, 3, 16, 24)
    assert 0 <= float(image.detach().min()) and float(image.detach().max()) <= 1
    image.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in drawer.parameters())


def test_pixel_and_fourier_init_from_image_reproduce_it():
    target = _image()
    for drawer in (PixelDrawer(16, 16, _gen()), FourierDrawer(16, 16, _gen())):
        drawer.init_from_image(target)
        assert torch.allclose(drawer.render(), target, atol=1e-4), type(drawer).__name__


def test_fourier_spectrum_is_frequency_scaled():
    drawer = FourierDrawer(16, 16, _gen(), decay=1.0)
    # DC and the lowest frequency share the floor 1/max(h, w); higher frequencies get less
    assert drawer.scale[0, 0] == drawer.scale[0, 1] > drawer.scale[0, 4] > drawer.scale[8, 8]
    assert math.isclose(float(drawer.scale[0, 4] / drawer.scale[0, 8]), 2.0, rel_tol=1e-5)


def test_pixelart_is_a_grid_of_cells_and_palette_limits_colours():
    drawer = PixelArtDrawer(16, 16, _gen(), cells=4)
    image = drawer.render()
    assert drawer.grid == (4, 4)
    assert torch.equal(image[..., :4, :4], image[..., :1, :1].expand(1, 3, 4, 4))
    palette = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    drawer = PixelArtDrawer(16, 16, _gen(), cells=4, palette=palette)
    image = drawer.render()
    colours = {tuple(c.tolist()) for c in image[0].permute(1, 2, 0).reshape(-1, 3)}
    assert colours <= {tuple(c.tolist()) for c in palette}
    image.sum().backward()  # straight-through: the hard choice still passes gradients
    assert drawer.logits.grad.abs().sum() > 0
    drawer.init_from_image(torch.ones(1, 3, 16, 16))  # white -> the white palette entry
    assert torch.all(drawer.render() == 1)


def test_decoder_drawer_optimises_only_the_latent():
    decoder = TinyDecoder()
    drawer = DecoderDrawer(16, 16, _gen(), decoder)
    assert [p.shape for p in drawer.parameters()] == [torch.Size([1, 4, 4, 4])]
    drawer.render().sum().backward()
    assert drawer.latents.grad is not None and decoder.conv.weight.grad is None
    target = _image(seed=3)
    before = F.mse_loss(drawer.render(), target)
    drawer.init_from_image(target, steps=50)  # no encoder: fitted by gradient descent
    assert F.mse_loss(drawer.render(), target) < before


def test_decoder_drawer_init_encodes_with_our_autoencoder():
    """An encoder returning a tensor (our Autoencoder) sets the latent to the encoding."""
    from imagesynth.nets.autoencoder import Autoencoder, autoencoder_config

    torch.manual_seed(0)
    autoencoder = Autoencoder(autoencoder_config("tiny"))
    drawer = DecoderDrawer(16, 16, _gen(), autoencoder)
    target = _image(seed=3)
    drawer.init_from_image(target)
    with torch.no_grad():
        assert torch.equal(drawer.latents, autoencoder.encode(target * 2 - 1))


def test_decoder_drawer_with_a_vector_vae_makes_only_its_size():
    from imagesynth.nets.autoencoder import Autoencoder, autoencoder_config

    torch.manual_seed(0)
    vae = Autoencoder(autoencoder_config("tiny-v8"))
    drawer = DecoderDrawer(16, 16, _gen(), vae)
    assert drawer.latents.shape == (1, 8, 1, 1)
    # the start is a draw from the VAE's sampling prior, not N(0, I)
    assert torch.equal(drawer.latents.detach(), vae.latent_prior.sample(1, _gen()))
    drawer.render().mean().backward()
    assert drawer.latents.grad.abs().sum() > 0
    target = _image(seed=3)
    drawer.init_from_image(target)
    with torch.no_grad():
        assert torch.equal(drawer.latents, vae.encode(target * 2 - 1))
    with pytest.raises(ConfigError, match="only 16x16") as info:
        DecoderDrawer(32, 32, _gen(), vae)
    assert info.value.field == "size"


@pytest.mark.parametrize("name,size,kwargs", [
    ("pixelart", (30, 30), {"cells": 8}),
    ("decoder", (18, 16), {"decoder": TinyDecoder()}),
    ("decoder", (16, 16), {}),
    ("crayons", (16, 16), {}),
])
def test_impossible_drawers_are_refused_by_field(name, size, kwargs):
    with pytest.raises(ConfigError) as info:
        build_drawer(name, *size, _gen(), **kwargs)
    assert info.value.field in {"size", "decoder", "drawer"}


def test_clamp_with_grad_keeps_gradients_that_return_to_range():
    x = torch.tensor([-0.5, 0.5, 1.5], requires_grad=True)
    clamp_with_grad(x).backward(torch.tensor([1.0, 1.0, 1.0]))  # descent would lower x
    assert x.grad.tolist() == [0.0, 1.0, 1.0]  # only -0.5 would move further out


def test_cutouts_are_seeded_and_shared_across_the_batch():
    image = torch.rand(2, 3, 32, 32, generator=_gen(2))
    config = CutoutConfig(count=6, cut_power=1.0, noise=0.0, flip=True)
    a = augmented_cutouts(image, 16, config, _gen(5))
    b = augmented_cutouts(image, 16, config, _gen(5))
    c = augmented_cutouts(image, 16, config, _gen(6))
    assert a.shape == (12, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    same = augmented_cutouts(torch.cat([image[:1], image[:1]]), 16, config, _gen(5))
    assert torch.equal(same[0::2], same[1::2])  # identical images -> identical crops and flips
    with pytest.raises(ConfigError, match="cutouts"):
        CutoutConfig(count=0)


def test_cutout_jitter_zooms_and_shifts_each_cutout_and_is_seeded():
    # a centred bright square on black: zoom/shift moves its edges, never invents new values
    image = torch.zeros(2, 3, 32, 32)
    image[:, :, 12:20, 12:20] = 1.0
    plain = CutoutConfig(count=8, noise=0.0, flip=False)
    jittered = CutoutConfig(count=8, noise=0.0, flip=False, jitter=0.3)
    base = augmented_cutouts(image, 32, plain, _gen(3))
    a = augmented_cutouts(image, 32, jittered, _gen(3))
    b = augmented_cutouts(image, 32, jittered, _gen(3))
    assert torch.equal(a, b) and a.shape == base.shape
    assert torch.equal(a[0::2], a[1::2])  # both images of the batch share each cutout's draw
    moved = [not torch.allclose(a[i], base[i], atol=1e-4) for i in range(0, 16, 2)]
    assert all(moved)
    assert a.min() >= -1e-6 and a.max() <= 1 + 1e-6  # bilinear resampling stays in range
    # zooming in never shrinks the square: its bright area grows or stays
    assert ((a > 0.5).float().sum(dim=(1, 2, 3)) >= (base > 0.5).float().sum(dim=(1, 2, 3)) * 0.9).all()
    image.requires_grad_(True)
    augmented_cutouts(image, 32, jittered, _gen(3)).sum().backward()
    assert image.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="cutout_jitter"):
        CutoutConfig(jitter=0.8)


def test_prompt_parsing_weights_negatives_styles_and_images():
    targets = parse_prompts("a red apple:1 | blurry:-0.5 | ratio: golden", ["cat.png:0.5"],
                            style="unreal")
    assert [(t.text, t.weight, t.is_image) for t in targets] == [
        ("a red apple, unreal engine, highly detailed", 1.0, False), ("blurry", -0.5, False),
        ("ratio: golden, unreal engine, highly detailed", 1.0, False), ("cat.png", 0.5, True)]
    assert normalised_weights(targets) == pytest.approx([0.5, -0.25, 0.5, 0.25])
    for bad in ("x:1 | y:-1", "", " | ", ":2"):
        with pytest.raises(ConfigError) as info:
            parse_prompts(bad)
        assert info.value.field == "prompt"


def test_prompt_loss_matches_the_spherical_distance_formula():
    e = F.normalize(torch.randn(5, 8, generator=_gen(1)), dim=-1)
    t = F.normalize(torch.randn(2, 8, generator=_gen(2)), dim=-1)
    w = torch.tensor([0.75, -0.25])
    theta = torch.arccos((e @ t.T).clamp(-1, 1))  # [N, P] angles
    expected = (theta.pow(2) / 2).mean(0) @ w  # d_sph = theta^2 / 2
    assert torch.allclose(prompt_loss(e, t, w), expected, atol=1e-5)


def test_regularisers_on_analytic_cases():
    flat = torch.full((1, 3, 4, 4), 0.5)
    assert total_variation_loss(flat) == 0 and range_loss(flat) == 0 and saturation_loss(flat) == 0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., 1::2] = 1.0  # every horizontal neighbour differs by 1, no vertical change
    assert total_variation_loss(stripes) == pytest.approx(1.0)
    assert range_loss(torch.tensor([-1.0, 0.5, 2.0])) == pytest.approx((1 + 0 + 1) / 3)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert saturation_loss(red) == pytest.approx((2 / 3 + 1 / 3 + 1 / 3) / 3)


def test_directional_loss_is_zero_along_the_text_direction():
    source = F.normalize(torch.randn(1, 8, generator=_gen(1)), dim=-1)
    direction = F.normalize(torch.randn(1, 8, generator=_gen(2)), dim=-1)
    assert directional_loss(source + 0.3 * direction, source, direction) == pytest.approx(0, abs=1e-6)
    assert directional_loss(source - 0.3 * direction, source, direction) == pytest.approx(2, abs=1e-6)


def test_decoder_drawer_asks_clamping_decoders_for_unclamped_output():
    class ClampingDecoder(TinyDecoder):
        def decode(self, latents, clamp=True):
            x = 3 * self.conv(F.interpolate(latents, scale_factor=4, mode="nearest"))
            return x.clamp(-1, 1) if clamp else x

    drawer = DecoderDrawer(16, 16, _gen(), ClampingDecoder())
    raw = drawer.unclamped().detach()
    assert float(raw.min()) < 0 or float(raw.max()) > 1  # saturated pixels exist
    drawer.render().sum().backward()  # ...and still pass gradients toward the range
    assert drawer.latents.grad.abs().sum() > 0
