"""ControlNet files on Stable Diffusion equal diffusers' ControlNet pipelines on tiny random models.

Our side: `SDPipeline(..., controls=[ControlInput(map, folder-or-file, scale, start, end)])`,
i.e. the engine's `ControlledDenoiser` over the discrete eps adapter, our Euler sampler and CFG.
Their side: `StableDiffusion(XL)ControlNetPipeline` with `EulerDiscreteScheduler` over the same
components, ControlNet(s) and seed. Latents must agree within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sd_tiny import tiny_components, tiny_pipeline

from imagesynth.errors import ConfigError
from imagesynth.families.controlnet import ControlInput
from imagesynth.sd.detect import CheckpointInfo
from imagesynth.sd.pipeline import SDPipeline

TOLERANCE = 1e-4
PREDICTION = {"sd1": "epsilon", "sd2": "v_prediction", "sdxl": "epsilon"}


def ours_over(pipe, kind: str = "sd1") -> SDPipeline:
    info = CheckpointInfo(kind, PREDICTION[kind], False, "diffusers", "test")
    return SDPipeline(pipe, info, "tiny", "0" * 64, "cpu")


def tiny_controlnet(unet, seed: int = 1):
    """`ControlNetModel.from_unet` with its zero convolutions given random weights, as training
    would, so the control changes the result."""
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(unet)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block",
                                "controlnet_cond_embedding.conv_out")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return controlnet.eval()


def saved_controlnet(tmp_path, unet, seed: int = 1):
    controlnet = tiny_controlnet(unet, seed)
    folder = tmp_path / f"controlnet-{seed}"
    controlnet.save_pretrained(folder, safe_serialization=True)
    return controlnet, folder


def condition_map(seed: int = 0, side: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))


def generator(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def diffusers_controlnet_pipeline(kind: str, controlnet):
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

    components = tiny_components(kind)
    if kind == "sdxl":
        return StableDiffusionXLControlNetPipeline(**components, controlnet=controlnet)
    return StableDiffusionControlNetPipeline(**components, controlnet=controlnet)


def theirs(pipe, image, **kwargs) -> torch.Tensor:
    return pipe("a red circle", image=image, num_inference_steps=4, guidance_scale=5.0,
                generator=generator(), height=64, width=64, output_type="latent",
                **kwargs).images


def ours(pipe, controls, kind: str = "sd1", negative: str = "blurry"):
    return ours_over(pipe, kind)("a red circle", negative_prompt=negative, seed=3, num_steps=4,
                                 sampler="euler", guidance_scale=5.0, size=64, controls=controls)


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_one_controlnet_equals_diffusers(tmp_path, kind):
    base = tiny_pipeline(kind)
    controlnet, folder = saved_controlnet(tmp_path, base.unet)
    reference = diffusers_controlnet_pipeline(kind, controlnet)
    expected = theirs(reference, condition_map(), negative_prompt="blurry",
                      controlnet_conditioning_scale=0.7)
    result = ours(base, [ControlInput(condition_map(), str(folder), 0.7)], kind)
    assert (result.samples - expected).abs().max() < TOLERANCE
    plain = ours(base, None, kind)
    assert (result.samples - plain.samples).abs().max() > 100 * TOLERANCE  # control matters
    entry = result.recipes[0]["controls"][0]
    assert entry["model"] == str(folder.resolve()) and entry["format"] == "diffusers"
    assert entry["scale"] == 0.7 and len(entry["model_hash"]) == 64


def test_a_window_and_a_resized_map_equal_diffusers(tmp_path):
    base = tiny_pipeline("sd1")
    controlnet, folder = saved_controlnet(tmp_path, base.unet)
    reference = diffusers_controlnet_pipeline("sd1", controlnet)
    small = condition_map(side=40)  # both resize it to 64x64 (Lanczos)
    expected = theirs(reference, small, negative_prompt="blurry",
                      control_guidance_start=0.25, control_guidance_end=0.75)
    result = ours(base, [ControlInput(small, str(folder), 1.0, 0.25, 0.75)])
    assert (result.samples - expected).abs().max() < TOLERANCE


def test_two_controlnets_with_scales_equal_multicontrolnet(tmp_path):
    base = tiny_pipeline("sd1")
    first, first_folder = saved_controlnet(tmp_path, base.unet, seed=1)
    second, second_folder = saved_controlnet(tmp_path, base.unet, seed=2)
    reference = diffusers_controlnet_pipeline("sd1", [first, second])
    maps = [condition_map(0), condition_map(1)]
    expected = theirs(reference, maps, negative_prompt="blurry",
                      controlnet_conditioning_scale=[0.8, 0.4],
                      control_guidance_start=[0.0, 0.5], control_guidance_end=[1.0, 1.0])
    result = ours(base, [ControlInput(maps[0], str(first_folder), 0.8),
                         ControlInput(maps[1], str(second_folder), 0.4, 0.5, 1.0)])
    assert (result.samples - expected).abs().max() < TOLERANCE


def test_sdxl_controlnet_equals_diffusers(tmp_path):
    base = tiny_pipeline("sdxl")
    controlnet, folder = saved_controlnet(tmp_path, base.unet)
    reference = diffusers_controlnet_pipeline("sdxl", controlnet)
    expected = theirs(reference, condition_map(), controlnet_conditioning_scale=0.6)
    result = ours(base, [ControlInput(condition_map(), str(folder), 0.6)], "sdxl", negative="")
    assert (result.samples - expected).abs().max() < TOLERANCE


def test_zero_scale_gives_the_base_model_exactly(tmp_path):
    base = tiny_pipeline("sd1")
    _, folder = saved_controlnet(tmp_path, base.unet)
    plain = ours(base, None)
    off = ours(base, [ControlInput(condition_map(), str(folder), 0.0)])
    assert torch.equal(off.samples, plain.samples)


def test_a_controlnet_for_another_base_is_refused(tmp_path):
    from imagesynth.sd.control import save_controlnet_single_file

    base = tiny_pipeline("sd1")
    sdxl_unet = tiny_components("sdxl")["unet"]
    xl_controlnet, folder = saved_controlnet(tmp_path, sdxl_unet)
    with pytest.raises(ConfigError) as error:
        ours(base, [ControlInput(condition_map(), str(folder), 1.0)])
    assert error.value.field == "control_model"
    assert folder.name in str(error.value) and "cross_attention_dim" in str(error.value)
    single = save_controlnet_single_file(xl_controlnet, tmp_path / "xl_control.safetensors")
    with pytest.raises(ConfigError) as error:
        ours(base, [ControlInput(condition_map(), str(single), 1.0)])
    assert error.value.field == "control_model" and single.name in str(error.value)


def test_an_original_layout_file_loads_to_equal_weights(tmp_path):
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    from imagesynth.sd.control import (controlnet_original_state_dict, load_sd_controlnet,
                                       save_controlnet_single_file)

    base = tiny_pipeline("sd1")
    controlnet, folder = saved_controlnet(tmp_path, base.unet)
    original = controlnet_original_state_dict(controlnet)
    assert all(key.startswith("control_model.") for key in original)
    assert "control_model.input_hint_block.14.weight" in original  # diffusers' fixed slot
    assert "control_model.zero_convs.0.0.weight" in original
    # diffusers' own converter maps every key back, tensor for tensor
    back = convert_controlnet_checkpoint(original, dict(controlnet.config))
    state = controlnet.state_dict()
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)

    path = save_controlnet_single_file(controlnet, tmp_path / "control_tiny.safetensors")
    loaded = load_sd_controlnet(path, base.unet)
    assert loaded.layout == "original"
    loaded_state = loaded.network.state_dict()
    assert set(loaded_state) == set(state)
    assert all(torch.equal(loaded_state[k], state[k]) for k in state)
    from_file = ours(base, [ControlInput(condition_map(), str(path), 0.7)])
    from_folder = ours(base, [ControlInput(condition_map(), str(folder), 0.7)])
    assert torch.equal(from_file.samples, from_folder.samples)
    assert from_file.recipes[0]["controls"][0]["format"] == "original"


def test_a_controlled_image_reproduces(tmp_path):
    from imagesynth.errors import InputImageError
    from imagesynth.generation import reproduce_image
    from imagesynth.io.pngmeta import save_png
    from imagesynth.registry import Registry

    base = tiny_pipeline("sd1")
    _, folder = saved_controlnet(tmp_path, base.unet)
    Registry().add(folder, name="tiny-sd1-control")  # a registry name works as well as a path
    pipeline = ours_over(base)
    condition_map().save(tmp_path / "map.png")
    other = tmp_path / "other.png"
    condition_map(5).save(other)
    result = pipeline("a red circle", seed=2, num_steps=3, size=64,
                      controls=[ControlInput(tmp_path / "map.png", "tiny-sd1-control", 0.9, 0.0,
                                             0.8)])
    assert result.recipes[0]["controls"][0]["model"] == "tiny-sd1-control"
    out = tmp_path / "out.png"
    save_png(result.images[0], out, result.recipes[0])
    report = reproduce_image(out, control_images=[tmp_path / "map.png"],
                             pipe_loader=lambda name: pipeline)
    assert report.identical
    with pytest.raises(InputImageError) as error:  # another map is refused by its hash
        reproduce_image(out, control_images=[other], pipe_loader=lambda name: pipeline)
    assert error.value.field == "control_image"
