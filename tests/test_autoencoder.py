"""KL autoencoders (grid and vector): interface, training, scaling factor, resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imagesynth.data.folder import CaptionedImageFolder
from imagesynth.errors import ConfigError, DataError, InputImageError, ModelNotFoundError
from imagesynth.io.checkpoint import load_weights
from imagesynth.nets.autoencoder import (PRESETS, Autoencoder, autoencoder_config,
                                         load_autoencoder, model_config)
from imagesynth.metrics import ModuleExtractor
from imagesynth.families.autoencoder import (KL_WEIGHTS, AutoencoderLoss, AutoencoderObjective,
                                             PixelStatistics, reconstruct_uint8, reconstruction_fd,
                                             train_autoencoder)
from imagesynth.train.datasets import ImageTensorSet
from imagesynth.metrics.psnr import psnr
from imagesynth.registry import write_model_folder

TINY_RUN = dict(max_steps=40, batch_size=8, eval_every=20, checkpoint_every=20)


@pytest.fixture(scope="module")
def shapes16(shapes_folder):
    """A 16 px ShapesWorld folder (120 images)."""
    return shapes_folder(120)


@pytest.fixture(scope="module")
def tiny_ae_run(shapes16, tmp_path_factory):
    """The tiny autoencoder trained 40 steps on `shapes16`."""
    out = tmp_path_factory.mktemp("ae-run")
    return train_autoencoder(shapes16, out, preset="tiny", overrides=TINY_RUN,
                             show_progress=False)


GRID_PRESETS = sorted(p for p in PRESETS if PRESETS[p].architecture == "kl-grid")
VECTOR_PRESETS = sorted(p for p in PRESETS if PRESETS[p].architecture == "vector")


@pytest.mark.parametrize("preset", GRID_PRESETS)
def test_presets_encode_and_decode_with_declared_shapes(preset):
    model = Autoencoder(autoencoder_config(preset)).eval()
    size, f = model.image_size, model.downsample_factor
    assert f == 4 and model.latent_channels == 4 and model.scaling_factor == 1.0
    images = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        latents = model.encode(images)
        decoded = model.decode(latents)
    assert latents.shape == (2, 4, size // f, size // f)
    assert decoded.shape == images.shape
    assert decoded.min() >= -1 and decoded.max() <= 1


@pytest.mark.parametrize("preset", VECTOR_PRESETS)
def test_vector_presets_have_one_latent_vector_per_image(preset):
    model = Autoencoder(autoencoder_config(preset)).eval()
    size, d = model.image_size, model.latent_channels
    assert model.fixed_image_size == size and model.downsample_factor == size
    images = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        posterior = model.posterior(images)
        latents = model.encode(images)
        decoded = model.decode(latents)
    assert latents.shape == (2, d, 1, 1) and decoded.shape == images.shape
    assert decoded.min() >= -1 and decoded.max() <= 1
    # KL(N(mu, sigma^2) || N(0, I)) summed over the vector, by its closed form
    mu, var = posterior.mean.flatten(1), posterior.var.flatten(1)
    expected = 0.5 * (mu.square() + var - 1 - var.log()).sum(1)
    assert torch.allclose(posterior.kl(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputImageError) as grid:  # a 2x2 grid of vectors is not an image
        model.decode(torch.zeros(1, d, 2, 2))
    assert grid.value.field == "latents"
    with pytest.raises(InputImageError) as wrong_size:
        model.encode(torch.zeros(1, 3, 2 * size, 2 * size))
    assert wrong_size.value.field == "images"
    with pytest.raises(ConfigError) as odd:
        autoencoder_config(preset, image_size=size + 2)
    assert odd.value.field == "image_size"


def test_vector_vae_trains_with_its_own_kl_weight_and_reloads(shapes16, tmp_path):
    result = train_autoencoder(shapes16, tmp_path / "v", preset="tiny-v8", overrides=TINY_RUN,
                               show_progress=False)
    model = load_autoencoder(str(result.model_dir))
    assert model.config.architecture == "vector" and model.fixed_image_size == 16
    config = json.loads((result.model_dir / "config.json").read_text())
    assert config["loss"]["kl_weight"] == KL_WEIGHTS["tiny-v8"] == 0.03
    assert "Vector VAE" in (result.model_dir / "CARD.md").read_text()
    images = ImageTensorSet(CaptionedImageFolder(shapes16, resolution=16, split="train")).images
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = Autoencoder(autoencoder_config("tiny-v8"))
    assert psnr(images, reconstruct_uint8(model, images)) > \
        psnr(images, reconstruct_uint8(untrained, images)) + 3.0
    # the sampling prior was fitted to the scaled training latents (no longer N(0, I))
    prior = model.latent_prior
    assert prior.weights.shape == (4,) and prior.weights.sum().item() == pytest.approx(1.0)
    assert prior.means.abs().sum() > 0
    with torch.no_grad():
        latents = model.encode(images.float() / 127.5 - 1).flatten(1)
        draws = prior.sample(4000, torch.Generator().manual_seed(0)).flatten(1)
        samples = model.decode(prior.sample(4, torch.Generator().manual_seed(0)))
    assert torch.allclose(draws.mean(0), latents.mean(0), atol=0.15)
    assert torch.allclose(draws.std(0), latents.std(0), rtol=0.2, atol=0.05)
    assert torch.isfinite(samples).all() and samples.std() > 0.05


def test_mixture_prior_recovers_a_known_mixture_and_samples_by_the_generator():
    from imagesynth.families.autoencoder import fit_latent_prior
    from imagesynth.nets.vector_vae import MixturePrior

    class LatentsAsPixels(torch.nn.Module):
        """Stand-in encoder: 4 x channels 0-1 of pixel (0, 0) are the scaled latent."""

        def __init__(self, prior):
            super().__init__()
            self.latent_prior = prior
            self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

        def encode(self, x):
            return 4 * x[:, :2, :1, :1]

    generator = torch.Generator().manual_seed(0)
    truth = MixturePrior(2, 2)
    covariances = torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.1, 0.0], [0.0, 0.4]]])
    truth.set(torch.tensor([0.3, 0.7]), torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), covariances)
    z = truth.sample(6000, generator)  # [N, 2, 1, 1]
    assert torch.equal(truth.sample(3, torch.Generator().manual_seed(5)),
                       truth.sample(3, torch.Generator().manual_seed(5)))
    pixels = torch.cat([z, z[:, :1]], dim=1).clamp(-3.9, 3.9) / 4  # [N, 3, 1, 1] in [-1, 1]
    images = ((pixels + 1) * 127.5).round().to(torch.uint8)
    fitted = MixturePrior(2, 2)
    model = LatentsAsPixels(fitted)
    fit_latent_prior(model, images, seed=0)
    order = fitted.means[:, 0].argsort()
    assert torch.allclose(fitted.weights[order], torch.tensor([0.3, 0.7]), atol=0.03)
    assert torch.allclose(fitted.means[order], truth.means, atol=0.1)
    recovered = fitted.scale_tril @ fitted.scale_tril.transpose(1, 2)
    assert torch.allclose(recovered[order], covariances, atol=0.06)


def test_encode_is_the_scaled_posterior_mean_and_sampling_uses_the_generator():
    model = Autoencoder(autoencoder_config("tiny")).eval().with_scaling_factor(2.5)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mean = model.posterior(images).mean
        assert torch.equal(model.encode(images), mean * 2.5)
        first = model.encode_sample(images, torch.Generator().manual_seed(1))
        again = model.encode_sample(images, torch.Generator().manual_seed(1))
        other = model.encode_sample(images, torch.Generator().manual_seed(2))
        assert torch.equal(first, again) and not torch.equal(first, other)
        # decode undoes the scaling: decode(encode(x)) == vae.decode(mu)
        expected = model.vae.decode(mean).sample.clamp(-1, 1)
        assert torch.allclose(model.decode(model.encode(images)), expected, atol=1e-5)


def test_objective_is_a_function_of_the_step_generator():
    model = Autoencoder(autoencoder_config("tiny"))
    batch = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    objective = AutoencoderObjective(AutoencoderLoss(kl_weight=1e-3))
    loss_a, metrics = objective(model, batch, torch.Generator().manual_seed(7))
    loss_b, _ = objective(model, batch, torch.Generator().manual_seed(7))
    assert torch.equal(loss_a, loss_b)
    assert loss_a.item() == pytest.approx(metrics["reconstruction"] + 1e-3 * metrics["kl"],
                                          rel=1e-5)
    assert metrics["kl"] > 0


def test_psnr_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8, generator=generator)
    noisy = (images.int() + torch.randint(-9, 10, images.shape, generator=generator)) \
        .clamp(0, 255).to(torch.uint8)
    expected = np.mean([metrics.peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=255)
                        for a, b in zip(images, noisy)])
    assert psnr(images, noisy) == pytest.approx(expected, rel=1e-9)
    # one grey level off everywhere: 20 log10(255) dB
    assert psnr(images[:1] * 0 + 10, images[:1] * 0 + 11) == pytest.approx(48.1308, abs=1e-4)


def test_reconstruction_fd_is_zero_for_identical_images_and_grows_with_damage():
    extractor = ModuleExtractor(PixelStatistics(), "pixels8x8")
    assert extractor.distance_name == "FD_pixels8x8"
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 16, 16), dtype=torch.uint8, generator=generator)
    assert reconstruction_fd(images, images, extractor) == pytest.approx(0.0, abs=1e-6)
    darker = (images.float() * 0.8).to(torch.uint8)
    assert reconstruction_fd(images, darker, extractor) > 1.0


def test_training_reduces_reconstruction_error_and_writes_a_loadable_folder(tiny_ae_run,
                                                                            shapes16):
    result = tiny_ae_run
    assert result.steps == 40 and result.stopped == "finished"
    assert set(result.metrics) >= {"psnr_val", "psnr_train", "FD_pixels8x8",
                                      "scaling_factor"}
    model = load_autoencoder(str(result.model_dir))
    assert model.scaling_factor == pytest.approx(result.metrics["scaling_factor"])
    images = ImageTensorSet(CaptionedImageFolder(shapes16, resolution=16, split="train")).images
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the run's seed: the untrained starting point
        untrained = Autoencoder(autoencoder_config("tiny"))
    before = psnr(images, reconstruct_uint8(untrained, images))
    after = psnr(images, reconstruct_uint8(model, images))
    assert after > before + 3.0  # dB
    assert model.config.image_size == 16 and not any(p.requires_grad for p in model.parameters())


def test_scaling_factor_gives_unit_std_latents_on_the_training_set(tiny_ae_run, shapes16):
    model = load_autoencoder(str(tiny_ae_run.model_dir))
    images = ImageTensorSet(CaptionedImageFolder(shapes16, resolution=16, split="train")).images
    with torch.no_grad():
        latents = model.encode(images.float() / 127.5 - 1)
    assert latents.double().std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
    assert model.scaling_factor != 1.0


def test_load_round_trip_gives_identical_outputs(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = Autoencoder(autoencoder_config("tiny")).eval().with_scaling_factor(0.7)
    folder = write_model_folder(tmp_path / "ae", model.state_dict(), model_config(model.config),
                                "# test autoencoder\n")
    loaded = load_autoencoder(str(folder))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(images), model.encode(images))
        latents = model.encode(images)
        assert torch.equal(loaded.decode(latents), model.decode(latents))
    assert loaded.scaling_factor == 0.7 and loaded.latent_size == 4


def test_resume_is_bit_exact(shapes16, tmp_path):
    settings = dict(max_steps=6, batch_size=4, eval_every=3, checkpoint_every=100)
    whole = train_autoencoder(shapes16, tmp_path / "whole", preset="tiny", overrides=settings,
                              show_progress=False)
    paused = train_autoencoder(shapes16, tmp_path / "split", preset="tiny", overrides=settings,
                               show_progress=False, stop_after=3)
    assert paused.steps == 3 and paused.stopped == "time_budget"
    resumed = train_autoencoder(shapes16, tmp_path / "split", preset="tiny",
                                overrides=settings, show_progress=False)
    assert resumed.steps == 6
    expected = load_weights(whole.model_dir / "model.safetensors")
    actual = load_weights(resumed.model_dir / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert resumed.metrics == whole.metrics


def test_bad_images_and_latents_name_the_field():
    model = Autoencoder(autoencoder_config("tiny"))
    with pytest.raises(InputImageError) as channels:
        model.encode(torch.zeros(1, 1, 16, 16))
    assert channels.value.field == "images"
    with pytest.raises(InputImageError, match="multiple of the downsample factor") as size:
        model.encode(torch.zeros(1, 3, 18, 18))
    assert size.value.field == "images"
    with pytest.raises(InputImageError) as latents:
        model.decode(torch.zeros(1, 3, 4, 4))
    assert latents.value.field == "latents"


def test_bad_presets_data_and_models_name_the_field(tmp_path, shapes16):
    with pytest.raises(ConfigError) as preset:
        autoencoder_config("huge")
    assert preset.value.field == "preset"
    with pytest.raises(ConfigError) as train_preset:
        train_autoencoder(shapes16, tmp_path / "run", preset="huge")
    assert train_preset.value.field == "preset"
    with pytest.raises(DataError) as data:
        train_autoencoder(tmp_path / "absent", tmp_path / "run", preset="tiny")
    assert data.value.field == "data"
    with pytest.raises(ConfigError) as loss:
        AutoencoderLoss(reconstruction="l3")
    assert loss.value.field == "reconstruction"
    clip_folder = write_model_folder(tmp_path / "clip", {"w": torch.zeros(1)},
                                     {"family": "clip"}, "# not an autoencoder\n")
    with pytest.raises(ModelNotFoundError, match="not an autoencoder") as family:
        load_autoencoder(str(clip_folder))
    assert family.value.field == "model"


def test_cli_trains_and_reports_one_line_errors(shapes16, tmp_path, capsys):
    from imagesynth.cli import run

    code = run(["train", "autoencoder", "--data", str(shapes16), "--out", str(tmp_path / "r"),
                "--preset", "tiny", "--steps", "4", "--batch-size", "4"])
    out = capsys.readouterr().out
    assert code == 0 and "finished after 4 steps" in out and "psnr_val" in out
    assert load_autoencoder(str(tmp_path / "r" / "model")).image_size == 16
    code = run(["train", "autoencoder", "--data", str(tmp_path / "absent"), "--out",
                str(tmp_path / "r2"), "--preset", "tiny"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "data" in err
    code = run(["train", "autoencoder", "--data", str(shapes16), "--out", str(tmp_path / "r3"),
                "--preset", "tiny", "--reconstruction", "l3"])
    err = capsys.readouterr().err
    assert code == 2 and "reconstruction" in err


def test_fd_with_a_clip_image_tower_is_named_after_it(tiny_clip_run):
    from imagesynth.families.autoencoder import fd_extractor

    _, clip_run = tiny_clip_run
    extractor = fd_extractor(str(clip_run.model_dir))
    assert extractor.distance_name == "FD_clip_model"
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=generator)
    assert reconstruction_fd(images, images, extractor) == pytest.approx(0.0, abs=1e-4)
    assert reconstruction_fd(images, 255 - images, extractor) > 1e-3
