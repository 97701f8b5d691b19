"""ControlNet: the denoiser wrapper against diffusers' own computation, condition maps, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imagesynth.data.conditions import (LAYOUT_CODES, check_condition, control_map, edge_map,
                                        layout_map, scribble_map)
from imagesynth.data.shapes import Scene, ShapeObject, object_masks, render_scene
from imagesynth.diffusion import (SAMPLERS, ClassifierFreeGuidance, EDMDenoiser, karras_sigmas,
                                  randn_like_per_sample)
from imagesynth.diffusion.control import (Control, ControlledDenoiser, check_control_settings,
                                          control_image_tensor)
from imagesynth.diffusion.noise import generators_from_seeds
from imagesynth.errors import ConfigError, InputImageError
from imagesynth.nets.controlnet import build_controlnet
from imagesynth.nets.unet import build_unet

TEXT_DIM = 16


def tiny_denoiser(seed: int = 0, coordinates: bool = True) -> EDMDenoiser:
    """A 16 px text-conditioned UNet with random weights (coordinate channels like `shapes-xy`)."""
    torch.manual_seed(seed)
    network = build_unet("tiny", TEXT_DIM, coordinates=coordinates)
    with torch.no_grad():  # diffusers zero-initialises conv_out: make the output depend on x
        for parameter in network.unet.conv_out.parameters():
            parameter.normal_(0, 0.1)
    return EDMDenoiser(network).eval()


def trained_like(controlnet, seed: int = 1):
    """Give a ControlNet's zero convolutions random weights, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block",
                                "controlnet_cond_embedding.conv_out")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return controlnet.eval()


def text(batch: int = 1, length: int = 5, seed: int = 2) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"encoder_hidden_states": torch.randn(batch, length, TEXT_DIM, generator=generator)}


def control_image(seed: int = 3, side: int = 16) -> torch.Tensor:
    return torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(seed))


def run(sampler, denoiser, seeds=(0, 1), steps: int = 4):
    sigmas = karras_sigmas(steps, 0.002, 80.0)
    generators = generators_from_seeds(list(seeds))
    x = randn_like_per_sample(torch.empty(len(seeds), 3, 16, 16), generators) * sigmas[0]
    with torch.no_grad():
        return SAMPLERS[sampler](denoiser, x, sigmas, generator=generators)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_a_fresh_controlnet_leaves_every_sampler_bit_identical(sampler):
    base = tiny_denoiser()
    controlnet = build_controlnet(base.network).eval()  # zero convolutions out
    cond, uncond = text(batch=2, seed=2), text(batch=2, seed=4)
    sigmas = karras_sigmas(4, 0.002, 80.0)
    controlled = ControlledDenoiser(base, [Control(controlnet, control_image(), 1.0, 0.1, 0.9)],
                                    sigmas)
    plain = run(sampler, ClassifierFreeGuidance(base, cond, uncond, 2.0))
    with_control = run(sampler, ClassifierFreeGuidance(controlled, cond, uncond, 2.0))
    assert torch.equal(plain, with_control)
    # The control did run: a trained ControlNet in the same place changes the images.
    trained_like(controlnet)
    assert not torch.equal(plain, run(sampler, ClassifierFreeGuidance(controlled, cond, uncond,
                                                                       2.0)))


def test_the_wrapper_equals_diffusers_controlnet_plus_unet_residuals():
    base = tiny_denoiser()
    first = trained_like(build_controlnet(base.network), seed=1)
    second = trained_like(build_controlnet(base.network), seed=5)
    images = [control_image(3), control_image(7)]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    sigma = torch.tensor([2.5, 2.5])
    cond = text(batch=2)
    controlled = ControlledDenoiser(base, [Control(first, images[0], 0.8),
                                           Control(second, images[1], 0.3)])
    with torch.no_grad():
        ours = controlled(x, sigma, **cond)
        # The reference: diffusers' MultiControlNet recipe written out by hand.
        c_skip, c_out, c_in, c_noise = base.scalings(sigma)
        sample = base.network.network_input(x * c_in[:, None, None, None])
        down, mid = None, None
        for net, image, scale in ((first, images[0], 0.8), (second, images[1], 0.3)):
            d, m = net(sample, c_noise, encoder_hidden_states=cond["encoder_hidden_states"],
                       controlnet_cond=image.expand(2, -1, -1, -1), conditioning_scale=scale,
                       return_dict=False)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        F_x = base.network.unet(sample, c_noise,
                                encoder_hidden_states=cond["encoder_hidden_states"],
                                down_block_additional_residuals=tuple(down),
                                mid_block_additional_residual=mid).sample
        reference = c_skip[:, None, None, None] * x + c_out[:, None, None, None] * F_x
    assert torch.equal(ours, reference)


def test_masked_text_tokens_are_ignored_like_truncated_ones():
    base = tiny_denoiser()
    controlnet = trained_like(build_controlnet(base.network))
    states = text(batch=1, length=4)["encoder_hidden_states"]
    padded = torch.cat([states, torch.randn(1, 3, TEXT_DIM)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]], dtype=torch.float32)
    x, sigma = torch.randn(1, 3, 16, 16), torch.tensor([1.0])
    controlled = ControlledDenoiser(base, [Control(controlnet, control_image())])
    with torch.no_grad():
        short = controlled(x, sigma, encoder_hidden_states=states,
                           encoder_attention_mask=torch.ones(1, 4))
        masked = controlled(x, sigma, encoder_hidden_states=padded, encoder_attention_mask=mask)
        unmasked = controlled(x, sigma, encoder_hidden_states=padded)
    torch.testing.assert_close(masked, short, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked, short, atol=1e-4)


def test_scale_zero_and_a_window_outside_the_run_give_the_base_model():
    base = tiny_denoiser()
    controlnet = trained_like(build_controlnet(base.network))
    cond = text(batch=2)
    sigmas = karras_sigmas(4, 0.002, 80.0)
    plain = run("heun", lambda x, s: base(x, s, **cond))

    def controlled(scale, start=0.0, end=1.0):
        wrapper = ControlledDenoiser(base, [Control(controlnet, control_image(), scale, start,
                                                    end)], sigmas)
        return run("heun", lambda x, s: wrapper(x, s, **cond))

    assert torch.equal(controlled(0.0), plain)
    assert torch.equal(controlled(1.0, 0.5, 0.5), plain)  # no step fits an empty window
    full, late = controlled(1.0), controlled(1.0, 0.5, 1.0)
    assert not torch.equal(full, plain) and not torch.equal(late, plain)
    assert not torch.equal(late, full)


def test_the_window_follows_diffusers_step_fractions():
    sigmas = karras_sigmas(10, 0.002, 80.0)
    control = Control(None, control_image(), 1.0, 0.2, 0.7)
    wrapper = ControlledDenoiser(tiny_denoiser(), [control], sigmas)
    active = [wrapper.weights(sigmas[i:i + 1])[0][0] > 0 for i in range(10)]
    # diffusers: keep = not (i / N < start or (i + 1) / N > end)
    assert active == [not (i / 10 < 0.2 or (i + 1) / 10 > 0.7) for i in range(10)]
    assert active == [False, False, True, True, True, True, True, False, False, False]


def test_the_bundled_shapes_unet_takes_a_controlnet():
    from imagesynth.pipeline import load_denoiser
    from imagesynth.registry import Registry

    registry = Registry()
    entry = registry.get("shapes")
    base = load_denoiser(registry.load_state_dict(entry), entry.config())
    assert base.network.coordinate_channels == 2
    controlnet = build_controlnet(base.network)
    assert controlnet.conv_in.in_channels == 5  # RGB + the two coordinate maps
    states = {"encoder_hidden_states": torch.randn(1, 6, 768)}
    x, sigma = torch.randn(1, 3, 32, 32), torch.tensor([3.0])
    wrapper = ControlledDenoiser(base, [Control(controlnet, control_image(side=32))])
    with torch.no_grad():
        assert torch.equal(wrapper(x, sigma, **states), base(x, sigma, **states))


def two_object_scene() -> Scene:
    return Scene(32, (ShapeObject("yellow", "circle", 3.0, 4.0, 11.0),
                      ShapeObject("blue", "triangle", 17.25, 16.5, 12.5)), "to the left of")


def test_layout_map_colours_each_object_mask_by_its_caption_order():
    scene = two_object_scene()
    layout = np.asarray(layout_map(scene), dtype=np.float64)
    masks = object_masks(scene)
    for mask, code in zip(masks, LAYOUT_CODES):
        inside = mask == 1
        assert inside.sum() > 40
        assert (layout[inside] == code).all()
    background = masks.sum(0) == 0
    assert (layout[background] == 0).all()
    # The masks are the image's own objects: coverage is where the rendered image is not white.
    image = np.asarray(render_scene(scene), dtype=np.float64)
    assert ((image < 255).any(-1) == (masks.sum(0) > 0)).all()
    # The first object's mask sits at its centroid (red channel), the second's at its (green).
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    for channel, obj in ((0, scene.objects[0]), (1, scene.objects[1])):
        weight = layout[..., channel] / 255
        centroid = ((weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum())
        assert np.allclose(centroid, obj.centroid, atol=0.3)


def test_edge_and_scribble_maps_outline_the_objects():
    scene = two_object_scene()
    image = render_scene(scene)
    masks = object_masks(scene) > 0.5
    from scipy import ndimage

    boundary = np.zeros_like(masks[0])
    for mask in masks:
        boundary |= mask ^ ndimage.binary_erosion(mask)
    near_boundary = ndimage.binary_dilation(boundary, iterations=2)
    edges = np.asarray(edge_map(image)) > 0
    assert edges.sum() > 30 and (edges <= near_boundary).all()
    for mask in masks:  # every object is outlined
        assert (edges & ndimage.binary_dilation(mask, iterations=2)).sum() > 10
    scribble = np.asarray(scribble_map(image)) > 0
    assert scribble.sum() > 1.5 * edges.sum()  # thick lines
    assert (scribble <= ndimage.binary_dilation(near_boundary, iterations=2)).all()
    assert np.asarray(edge_map(Image.new("RGB", (32, 32), "white"))).max() == 0


def test_control_maps_refuse_layout_and_unknown_kinds():
    image = Image.new("RGB", (16, 16))
    with pytest.raises(ConfigError) as error:
        control_map("layout", image)
    assert error.value.field == "condition"
    with pytest.raises(ConfigError, match="unknown condition") as error:
        check_condition("depth")
    assert error.value.field == "condition"


def test_bad_control_settings_name_their_field():
    for args, field in (((-0.5, 0.0, 1.0), "control_scale"), ((1.0, 0.8, 0.2), "control_start"),
                        ((1.0, 0.0, 1.5), "control_end"), ((float("nan"), 0, 1), "control_scale")):
        with pytest.raises(ConfigError) as error:
            check_control_settings(*args)
        assert error.value.field == field
        assert "\n" not in error.value.one_line()


def test_control_images_of_the_same_aspect_are_resized_others_refused():
    square = Image.new("RGB", (64, 64), (255, 0, 0))
    tensor = control_image_tensor(square, 32)
    assert tensor.shape == (1, 3, 32, 32) and torch.equal(tensor[0, 0], torch.ones(32, 32))
    with pytest.raises(InputImageError, match="32x32") as error:
        control_image_tensor(Image.new("RGB", (48, 32)), 32)
    assert error.value.field == "control_image"


def test_generate_config_checks_control_options():
    from imagesynth.generation import GenerateConfig

    with pytest.raises(ConfigError) as error:
        GenerateConfig(prompt="a red circle", control_scale=(0.5,))
    assert error.value.field == "control_scale"
    with pytest.raises(ConfigError) as error:
        GenerateConfig(prompt="a red circle", control_image=("a.png",))
    assert error.value.field == "control_model"
    with pytest.raises(ConfigError) as error:
        GenerateConfig(prompt="a red circle", control_image=("a.png", "b.png"),
                       control_model=("m",), control_scale=(1.0, 0.5, 0.2))
    assert error.value.field == "control_scale"
    with pytest.raises(ConfigError) as error:
        GenerateConfig(prompt="a red circle", control_image=("a.png",), control_model=("m",),
                       control_start=(0.9,), control_end=(0.1,))
    assert error.value.field == "control_start"
    config = GenerateConfig(prompt="a red circle", control_image=("a.png", "b.png"),
                            control_model=("m",), control_scale=(1.0, 0.5))
    assert [(c.model, c.scale) for c in config.controls()] == [("m", 1.0), ("m", 0.5)]
