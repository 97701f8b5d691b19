"""Stable Diffusion on imagesynth's engine equals diffusers' pipelines on tiny random models.

Our side: the diffusers UNet behind `DiscreteEpsDenoiser`/`DiscreteVDenoiser`, our Euler sampler,
our CFG, per-sample generators. Their side: `StableDiffusion*Pipeline` with `EulerDiscreteScheduler`
over the same components and seed. Latents must agree within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sd_tiny import save_tiny_folder, tiny_pipeline

from imagesynth.errors import ConfigError
from imagesynth.sd.detect import CheckpointInfo
from imagesynth.sd.pipeline import SDPipeline

PREDICTION = {"sd1": "epsilon", "sd2": "v_prediction", "sdxl": "epsilon"}
TOLERANCE = 1e-4


def ours_over(pipe, kind: str, inpaint: bool = False) -> SDPipeline:
    info = CheckpointInfo(kind, PREDICTION[kind], inpaint, "diffusers", "test")
    return SDPipeline(pipe, info, "tiny", "0" * 64, "cpu")


def init_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def generator(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_text_to_image_equals_diffusers(kind):
    pipe = tiny_pipeline(kind)
    ours = ours_over(pipe, kind)
    # SDXL: no negative prompt means zero embeddings in both (diffusers' force_zeros_for_empty_prompt)
    negative = None if kind == "sdxl" else "blurry"
    expected = pipe("a red circle", negative_prompt=negative, num_inference_steps=4,
                    guidance_scale=5.0, generator=generator(), height=64, width=64,
                    output_type="latent").images
    result = ours("a red circle", negative_prompt=negative or "", seed=3, num_steps=4,
                  sampler="euler", guidance_scale=5.0, size=64)
    assert (result.samples - expected).abs().max() < TOLERANCE
    pixels = pipe("a red circle", negative_prompt=negative, num_inference_steps=4,
                  guidance_scale=5.0, generator=generator(), height=64, width=64,
                  output_type="np").images[0]
    ours_pixels = np.asarray(result.images[0], dtype=np.float32) / 255
    assert np.abs(ours_pixels - pixels).max() <= 1 / 255  # 8-bit rounding only
    assert result.recipes[0]["sampler_options"]["prediction_type"] == PREDICTION[kind]


def test_sdxl_with_a_negative_prompt_equals_diffusers():
    pipe = tiny_pipeline("sdxl")
    expected = pipe("a red circle", negative_prompt="a blue square", num_inference_steps=3,
                    guidance_scale=4.0, generator=generator(5), height=64, width=64,
                    output_type="latent").images
    result = ours_over(pipe, "sdxl")("a red circle", negative_prompt="a blue square", seed=5,
                                     num_steps=3, sampler="euler", guidance_scale=4.0, size=64)
    assert (result.samples - expected).abs().max() < TOLERANCE


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_img2img_equals_diffusers(kind):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    pipe = tiny_pipeline(kind)
    cls = StableDiffusionXLImg2ImgPipeline if kind == "sdxl" else StableDiffusionImg2ImgPipeline
    # strength 0.6 of 10 steps: both run the last int(10 * 0.6) = 6 steps of the schedule
    expected = cls(**pipe.components)("a red circle", image=init_image(), strength=0.6,
                                      num_inference_steps=10, guidance_scale=5.0,
                                      generator=generator(), output_type="latent").images
    result = ours_over(pipe, kind)("a red circle", seed=3, num_steps=10, sampler="euler",
                                   guidance_scale=5.0, size=64, init_image=init_image(),
                                   strength=0.6)
    assert (result.samples - expected).abs().max() < TOLERANCE


def test_inpainting_model_equals_diffusers():
    pipe = tiny_pipeline("sd1", inpaint=True)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255
    expected = pipe("a red circle", image=init_image(), mask_image=Image.fromarray(mask),
                    num_inference_steps=5, guidance_scale=5.0, generator=generator(),
                    output_type="latent").images
    result = ours_over(pipe, "sd1", inpaint=True)(
        "a red circle", seed=3, num_steps=5, sampler="euler", guidance_scale=5.0, size=64,
        init_image=init_image(), mask=Image.fromarray(mask))
    assert (result.samples - expected).abs().max() < TOLERANCE


def test_batches_do_not_change_an_image():
    ours = ours_over(tiny_pipeline("sd1"), "sd1")
    alone = ours("a red circle", seed=4, num_steps=3, size=64)
    batch = ours("a red circle", seed=3, num_images=2, num_steps=3, size=64)
    assert batch.images[1].tobytes() == alone.images[0].tobytes()


def test_every_sampler_runs_and_long_weighted_prompts_work():
    ours = ours_over(tiny_pipeline("sd2"), "sd2")
    long_prompt = ", ".join(["a (red:1.3) circle", "[blurry]"] * 30)  # > 75 tokens: 2+ chunks
    for sampler in ("euler", "heun", "euler_ancestral", "dpmpp_2m", "ddpm"):
        result = ours(long_prompt, seed=0, num_steps=3, sampler=sampler, size=64)
        assert np.asarray(result.images[0]).std() > 0


def test_sizes_must_be_multiples_of_8():
    ours = ours_over(tiny_pipeline("sd1"), "sd1")
    with pytest.raises(ConfigError) as error:
        ours("a red circle", size=60, num_steps=2)
    assert error.value.field == "size"
    result = ours("a red circle", size=128, num_steps=2)
    assert result.images[0].size == (128, 128)


def test_a_folder_loads_through_the_registry_and_reproduces(tmp_path):
    from imagesynth.generation import reproduce_image
    from imagesynth.io.pngmeta import save_png
    from imagesynth.pipeline import load_pipeline
    from imagesynth.registry import Registry

    folder = save_tiny_folder(tmp_path / "tiny-sd2", "sd2")
    entry = Registry().add(folder, name="tiny-sd2")
    assert entry.family == "stable-diffusion"
    assert entry.details["arch"] == "sd2" and entry.details["prediction"] == "v_prediction"
    pipe = load_pipeline("tiny-sd2", device="cpu")
    result = pipe("a red circle", seed=1, num_steps=3)
    assert result.recipes[0]["model_hash"] == entry.weights_sha256
    out = tmp_path / "out.png"
    save_png(result.images[0], out, result.recipes[0])
    assert reproduce_image(out).identical


def test_width_and_height_equal_diffusers_for_sdxl():
    pipe = tiny_pipeline("sdxl")
    # SDXL reads the size twice: the latent shape and add_time_ids (height, width)
    expected = pipe("a red circle", num_inference_steps=3, guidance_scale=4.0,
                    generator=generator(7), height=48, width=80, output_type="latent").images
    result = ours_over(pipe, "sdxl")("a red circle", seed=7, num_steps=3, sampler="euler",
                                     guidance_scale=4.0, size=(80, 48))
    assert result.samples.shape == expected.shape == (1, 4, 6, 10)
    assert (result.samples - expected).abs().max() < TOLERANCE
    assert result.images[0].size == (80, 48) and result.recipes[0]["size"] == [80, 48]


def test_non_square_img2img_and_refusals():
    ours = ours_over(tiny_pipeline("sd1"), "sd1")
    result = ours("a red circle", seed=0, num_steps=4, size=(96, 64), init_image=init_image(),
                  strength=0.5)
    assert result.images[0].size == (96, 64)
    with pytest.raises(ConfigError) as error:
        ours("a red circle", size=(96, 60), num_steps=2)
    assert error.value.field == "size"
