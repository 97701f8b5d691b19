"""img2img strength -> sigmas, inpainting keeps the known region, outpainting pads and masks."""

from types import SimpleNamespace

import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline

from imagesynth.diffusion import (InpaintDenoiser, blur_mask, generators_from_seeds, img2img,
                                  img2img_sigmas, karras_sigmas, pad_for_outpaint, sample_euler,
                                  sample_euler_ancestral, sample_heun, truncate_sigmas)
from imagesynth.errors import ConfigError


def test_full_strength_is_the_full_karras_schedule():
    assert torch.allclose(img2img_sigmas(10, 1.0, 0.03, 14.6), karras_sigmas(10, 0.03, 14.6), rtol=1e-6)


def test_strength_sets_the_start_on_the_ramp_and_keeps_the_step_count():
    sigmas = img2img_sigmas(8, 0.5, 0.03, 14.6, rho=7.0)
    assert sigmas.shape == (9,) and sigmas[-1] == 0
    expected_start = (14.6 ** (1 / 7) + 0.5 * (0.03 ** (1 / 7) - 14.6 ** (1 / 7))) ** 7
    assert sigmas[0].item() == pytest.approx(expected_start, rel=1e-6)
    assert sigmas[-2].item() == pytest.approx(0.03, rel=1e-6)


@pytest.mark.parametrize("num_steps,strength", [(10, 0.29), (10, 0.75), (7, 0.5), (50, 1.0), (4, 0.3)])
def test_truncate_sigmas_follows_diffusers_get_timesteps(num_steps, strength):
    sigmas = karras_sigmas(num_steps, 0.03, 14.6)
    fake_pipeline = SimpleNamespace(scheduler=SimpleNamespace(timesteps=torch.arange(num_steps), order=1))
    timesteps, steps_run = StableDiffusionImg2ImgPipeline.get_timesteps(fake_pipeline, num_steps, strength, "cpu")
    if steps_run == 0:
        with pytest.raises(ConfigError):
            truncate_sigmas(sigmas, strength)
        return
    kept = truncate_sigmas(sigmas, strength)
    assert len(kept) - 1 == steps_run
    assert torch.equal(kept[:-1], sigmas[timesteps])


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_strength_outside_unit_interval_names_the_field(strength):
    with pytest.raises(ConfigError) as error:
        img2img_sigmas(10, strength, 0.03, 14.6)
    assert error.value.field == "strength"


def test_img2img_is_seeded_and_stays_near_the_input_at_low_strength():
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    denoiser = lambda x, sigma: x / (1 + sigma[:, None, None, None] ** 2)  # noqa: E731  (x0 ~ N(0, 1))
    low = img2img(sample_euler, denoiser, x0, img2img_sigmas(6, 0.1, 0.002, 80.0), generators_from_seeds([1, 2]))
    again = img2img(sample_euler, denoiser, x0, img2img_sigmas(6, 0.1, 0.002, 80.0), generators_from_seeds([1, 2]))
    high = img2img(sample_euler, denoiser, x0, img2img_sigmas(6, 1.0, 0.002, 80.0), generators_from_seeds([1, 2]))
    assert torch.equal(low, again)
    assert (low - x0).abs().mean() < (high - x0).abs().mean()


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun, sample_euler_ancestral])
def test_inpainting_returns_the_known_region_exactly(sampler):
    x0 = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[:, :, 2:6, 2:6] = 1
    seen_known = []

    def denoiser(x, sigma):
        seen_known.append(((x - x0) * (1 - mask)).abs().max() / sigma[0])
        return torch.tanh(x)

    sigmas = karras_sigmas(5, 0.01, 10.0, dtype=torch.float64)
    inpaint = InpaintDenoiser(denoiser, x0, mask, generators_from_seeds([3, 4]))
    generators = generators_from_seeds([30, 40])
    result = sampler(inpaint, inpaint.start(sigmas[0], generators), sigmas, generator=generators)
    keep = (1 - mask).bool().expand_as(x0)
    assert torch.allclose(result[keep], x0[keep], atol=1e-12)
    assert not torch.allclose(result[~keep], x0[~keep], atol=1e-3)
    # The network always sees the known region noised to exactly the current sigma (|noise| bounded).
    assert max(seen_known) < 6


def test_mask_of_the_wrong_size_names_the_field():
    with pytest.raises(ConfigError) as error:
        InpaintDenoiser(lambda x, s: x, torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 4, 4),
                        generators_from_seeds([0]))
    assert error.value.field == "mask"
    with pytest.raises(ConfigError):
        InpaintDenoiser(lambda x, s: x, torch.zeros(1, 3, 8, 8), torch.full((1, 1, 8, 8), 2.0),
                        generators_from_seeds([0]))


def test_blur_mask_softens_edges_and_preserves_flat_regions():
    mask = torch.zeros(1, 1, 16, 16)
    mask[:, :, :, 8:] = 1
    blurred = blur_mask(mask, 1.5)
    assert blurred[0, 0, 5, 0] == 0 and blurred[0, 0, 5, 15] == pytest.approx(1.0)
    assert 0.3 < blurred[0, 0, 5, 8] < 0.7
    assert torch.allclose(blurred[0, 0, 0], blurred[0, 0, 9])  # blurred only across the edge
    assert torch.equal(blur_mask(mask, 0), mask)


def test_outpaint_pads_and_masks_the_new_border():
    image = torch.rand(1, 3, 4, 6)
    padded, mask = pad_for_outpaint(image, left=2, right=0, top=1, bottom=3, overlap=1)
    assert padded.shape == (1, 3, 8, 8) and mask.shape == (1, 1, 8, 8)
    assert torch.equal(padded[:, :, 1:5, 2:8], image)
    assert mask[0, 0, 2:4, 3:8].sum() == 0          # original minus a 1-pixel seam on padded sides
    assert mask[0, 0, 4, 3:8].eq(1).all() and mask[0, 0, 2:4, 2].eq(1).all()  # the seams
    assert mask[0, 0, :, :2].eq(1).all() and mask[0, 0, 5:].eq(1).all() and mask.sum() == 64 - 10
    with pytest.raises(ConfigError):
        pad_for_outpaint(image)
