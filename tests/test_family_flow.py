"""Glow flow family: exact log-dets, exact inverses, bits/dim, seeds, errors, model folders."""

from __future__ import annotations

import json
import math

import pytest
import torch

from imagesynth.config import to_dict
from imagesynth.data.folder import CaptionedImageFolder
from imagesynth.diffusion.noise import generators_from_seeds, randn_like_per_sample
from imagesynth.errors import ConfigError
from imagesynth.families import GeneratorFamily, LatentFamily
from imagesynth.families.flow import (FlowConfig, FlowModel, bits_per_dim,
                                      discrete_bits_per_dim, dequantize, flow_config, load_flow,
                                      train_flow)
from imagesynth.train.datasets import ImageTensorSet, to_signed, to_uint8
from imagesynth.nets.flow import (ActNorm, AffineCoupling, Glow, InvConv1x1, SplitPrior,
                                  TopPrior, squeeze, unsqueeze)
from imagesynth.registry import write_model_folder

TINY_RUN = dict(max_steps=60, batch_size=16, eval_every=30, checkpoint_every=60)


def perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Add seeded noise to every parameter, so zero-initialised layers are not trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator,
                                               dtype=parameter.dtype))
    return module


def jacobian_logdet(function, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of a map between flat vectors, from autograd's dense Jacobian."""
    jacobian = torch.autograd.functional.jacobian(function, x, vectorize=True)
    return torch.linalg.slogdet(jacobian)[1]


@pytest.fixture(scope="module")
def shapes16(shapes_folder):
    """A 16 px ShapesWorld folder (200 images, 7 of them in the val split)."""
    return shapes_folder(200)


@pytest.fixture(scope="module")
def tiny_run(shapes16, tmp_path_factory):
    """The tiny flow trained 60 steps on `shapes16` (at 8 px)."""
    return train_flow(shapes16, tmp_path_factory.mktemp("flow-run"), preset="tiny",
                      overrides=TINY_RUN, show_progress=False)


@pytest.fixture(scope="module")
def trained(tiny_run):
    """The tiny run's saved model, loaded back."""
    return load_flow(tiny_run.model_dir)


@pytest.fixture(scope="module")
def val_images(shapes16):
    """The val split at 8 px as uint8 [7, 3, 8, 8]."""
    return ImageTensorSet(CaptionedImageFolder(shapes16, resolution=8, split="val")).images


def _single(layer, shape, condition=None):
    """Flat-vector map x -> y of one layer (B = 1) and the log-det the layer reports."""
    def function(flat):
        y = layer(flat.view(1, *shape), condition)
        return torch.cat([part.flatten() for part in y[:-1]])
    return function


LAYERS = {
    "actnorm": (lambda: ActNorm(4), (4, 3, 3), 0),
    "invconv": (lambda: InvConv1x1(4), (4, 3, 3), 0),
    "coupling": (lambda: AffineCoupling(4, 8), (4, 3, 3), 0),
    "coupling-conditional": (lambda: AffineCoupling(4, 8, condition_dim=3), (4, 3, 3), 3),
    "coupling-bounded": (lambda: AffineCoupling(4, 8, min_scale=0.5), (4, 3, 3), 0),
    "split": (lambda: SplitPrior(4), (4, 3, 3), 0),
    "top-conditional": (lambda: TopPrior(4, 3, condition_dim=3), (4, 3, 3), 3),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_layer_logdet_equals_autograd_jacobian_and_inverts(name):
    make, shape, condition_dim = LAYERS[name]
    torch.manual_seed(0)
    layer = perturb(make()).double().eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, *shape, generator=generator, dtype=torch.float64)
    condition = torch.randn(1, condition_dim, generator=generator, dtype=torch.float64) \
        if condition_dim else None
    outputs = layer(x, condition)
    expected = jacobian_logdet(_single(layer, shape, condition), x.flatten())
    assert outputs[-1].shape == (1,)
    assert outputs[-1].item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-9)
    assert abs(expected.item()) > 0.1  # the perturbed layer is not volume-preserving
    restored = layer.inverse(*outputs[:-1], condition) if name == "split" else \
        layer.inverse(outputs[0], condition)
    assert torch.allclose(restored, x, atol=1e-12)


def test_actnorm_initialises_from_the_first_training_batch_only():
    layer = ActNorm(3)
    x = torch.randn(64, 3, 4, 4) * torch.tensor([0.1, 2.0, 5.0])[:, None, None] + 3.0
    y, _ = layer(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std((0, 2, 3)), torch.ones(3), atol=1e-4)
    before = [p.clone() for p in layer.parameters()]
    layer(x * 7 + 1)  # a second batch must not re-initialise
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))
    fresh = ActNorm(3).eval()
    fresh(x)  # eval mode never initialises: encodes must not depend on the batch
    assert not bool(fresh.initialized)


def test_squeeze_is_a_permutation_and_unsqueeze_inverts_it():
    x = torch.arange(2 * 3 * 4 * 4.0).view(2, 3, 4, 4)
    y = squeeze(x)
    assert y.shape == (2, 12, 2, 2)
    assert torch.equal(torch.sort(y.flatten())[0], x.flatten())
    assert torch.equal(y[0, :4, 0, 0], torch.tensor([0.0, 1.0, 4.0, 5.0]))  # one 2x2 patch
    assert torch.equal(unsqueeze(y), x)


def test_whole_flow_logdet_equals_autograd_jacobian():
    torch.manual_seed(0)
    glow = Glow(8, levels=2, steps_per_level=2, hidden_channels=8, condition_dim=4)
    generator = torch.Generator().manual_seed(2)
    batch = torch.rand(32, 3, 8, 8, generator=generator) * 2 - 1
    glow.train()(batch, torch.randn(32, 4, generator=generator))  # ActNorm data init
    glow = perturb(glow, scale=0.05).double().eval()
    x = torch.rand(1, 3, 8, 8, generator=generator, dtype=torch.float64) * 2 - 1
    condition = torch.randn(1, 4, generator=generator, dtype=torch.float64)
    eps, logdet = glow(x, condition)
    expected = jacobian_logdet(lambda flat: glow(flat.view(1, 3, 8, 8), condition)[0][0],
                               x.flatten())
    assert eps.shape == (1, 192)
    assert logdet.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(glow.inverse(eps, condition), x, atol=1e-10)
    other = glow(x, condition + 1.0)[0]  # the condition reaches the flow
    assert not torch.allclose(other, eps, atol=1e-3)
    with pytest.raises(ConfigError) as missing:
        glow(x)
    assert missing.value.field == "condition"


def test_uniform_density_scores_the_8_bit_baseline():
    dims = 192
    # uniform on [-1, 1]^D: log p = -D ln 2, which is exactly 8 bits per 8-bit dimension
    log_px = torch.tensor([-dims * math.log(2)])
    assert discrete_bits_per_dim(log_px, dims).item() == pytest.approx(8.0, abs=1e-12)
    x = dequantize(torch.tensor([[0, 255]], dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert -1.0 <= x.min() and x[0, 0] < -1 + 2 / 256 and x[0, 1] >= 1 - 2 / 256 and x.max() < 1


def test_decode_of_encode_is_exact_on_a_trained_flow(trained, val_images):
    x = to_signed(val_images)
    eps = trained.encode(x)
    assert torch.equal(eps, trained.encode(x))  # deterministic: no dequantisation noise
    assert (trained.decode(eps, clamp=False) - x).abs().max() < 1e-4
    last_layers = [m.conv_out.conv.weight for m in trained.modules()
                   if isinstance(m, AffineCoupling)]
    assert all(w.abs().max() > 1e-3 for w in last_layers)  # trained: not identity couplings
    assert isinstance(trained, LatentFamily) and isinstance(trained, GeneratorFamily)
    assert trained.family == "flow" and trained.has_latent and trained.image_size == 8


def test_held_out_bits_per_dim_is_below_uniform_and_falls_with_training(
        tiny_run, trained, shapes16, val_images):
    train_images = ImageTensorSet(CaptionedImageFolder(shapes16, resolution=8,
                                                       split="train")).images
    with torch.random.fork_rng(devices=[]):  # the run's own init, before any step
        torch.manual_seed(0)
        initial = FlowModel(flow_config("tiny"))
    initial.initialize(dequantize(train_images, torch.Generator().manual_seed(0)))
    before = bits_per_dim(initial, val_images)
    after = bits_per_dim(trained, val_images)
    assert math.isfinite(after) and after < 8.0
    assert after < before - 0.5
    evals = [json.loads(line)["eval"]["bits_per_dim_val"]
             for line in (tiny_run.model_dir.parent / "log.jsonl").read_text().splitlines()
             if "eval" in json.loads(line)]
    assert len(evals) == 2 and before > evals[0] > evals[1]
    assert tiny_run.metrics["bits_per_dim_val"] == pytest.approx(after, abs=1e-12)


def test_same_seeds_give_the_same_bytes_and_batching_changes_nothing(trained):
    batch = trained.sample(3, generators_from_seeds([5, 6, 7]))
    again = trained.sample(3, generators_from_seeds([5, 6, 7]))
    alone = trained.sample(1, generators_from_seeds([6]))
    assert batch.shape == (3, 3, 8, 8) and batch.min() >= -1 and batch.max() <= 1
    assert to_uint8(batch).numpy().tobytes() == to_uint8(again).numpy().tobytes()
    assert to_uint8(batch[1:2]).numpy().tobytes() == to_uint8(alone).numpy().tobytes()
    # floats agree to conv rounding (kernels may differ with the batch size), not bit for bit
    assert torch.allclose(batch[1:2], alone, atol=1e-5)
    assert not torch.equal(batch[0], batch[1])


def test_temperature_scales_the_prior_std(trained):
    sampled = trained.sample(2, generators_from_seeds([1, 2]), temperature=0.5)
    eps = randn_like_per_sample(torch.empty(2, 192), generators_from_seeds([1, 2]))
    assert torch.equal(sampled, trained.decode(0.5 * eps))
    assert not torch.equal(sampled, trained.sample(2, generators_from_seeds([1, 2])))


@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan")])
def test_non_positive_temperature_is_a_one_line_config_error(trained, temperature):
    with pytest.raises(ConfigError) as error:
        trained.sample(1, generators_from_seeds([0]), temperature=temperature)
    assert error.value.field == "temperature" and "\n" not in str(error.value)


def test_too_small_data_set_is_a_config_error_naming_data(shapes_folder, tmp_path):
    with pytest.raises(ConfigError) as error:
        train_flow(shapes_folder(30), tmp_path / "run", preset="tiny", show_progress=False)
    assert error.value.field == "data" and "at least 32" in str(error.value)
    assert not (tmp_path / "run").exists()


def test_bounded_coupling_scale_keeps_extreme_latents_finite():
    def glow(min_scale):
        torch.manual_seed(0)
        net = Glow(8, levels=2, steps_per_level=4, hidden_channels=16, min_scale=min_scale)
        with torch.no_grad():  # every coupling at a tiny scale, as on latents unlike the data
            for module in net.modules():
                if isinstance(module, AffineCoupling):
                    module.conv_out.conv.bias.fill_(-40.0)
        return net.eval()

    eps = torch.randn(4, 192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        original, bounded = glow(0.0).inverse(eps), glow(0.5).inverse(eps)
    assert not torch.isfinite(original).all()  # Glow's s = sigmoid(h + 2): 1/s overflows
    assert torch.isfinite(bounded).all()
    coupling = next(m for m in glow(0.5).modules() if isinstance(m, AffineCoupling))
    with torch.no_grad():  # at the floor s = 0.5 exactly: each coupling's inverse gains <= 2
        _, log_s = coupling._shift_and_log_scale(torch.zeros(1, 6, 4, 4), None)
    assert torch.allclose(log_s, torch.full_like(log_s, math.log(0.5)))


def test_config_errors_name_their_fields():
    with pytest.raises(ConfigError) as size:
        FlowConfig(image_size=12, levels=3)
    assert size.value.field == "image_size"
    with pytest.raises(ConfigError) as scale:
        FlowConfig(min_scale=1.0)
    assert scale.value.field == "min_scale"
    with pytest.raises(ConfigError) as preset:
        flow_config("huge")
    assert preset.value.field == "preset"


def test_saved_model_folder_loads_back_and_samples_identically(tmp_path, tiny_run):
    torch.manual_seed(3)
    model = FlowModel(flow_config("tiny"))
    model.initialize(torch.rand(32, 3, 8, 8) * 2 - 1)
    model = perturb(model, scale=0.05).eval()
    folder = write_model_folder(tmp_path / "flow", model.state_dict(),
                                {"family": "flow", "flow": to_dict(model.config)}, "# test\n")
    loaded = load_flow(folder)
    seeds = generators_from_seeds([11, 12])
    assert torch.equal(loaded.sample(2, seeds), model.sample(2, generators_from_seeds([11, 12])))
    snapshot = {k: v.clone() for k, v in loaded.state_dict().items()}
    loaded.train()(torch.rand(8, 3, 8, 8) * 5)  # the stored init flag stops a re-init
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in snapshot.items())
    written = json.loads((tiny_run.model_dir / "config.json").read_text())
    assert written["family"] == "flow" and written["flow"] == to_dict(flow_config("tiny"))
    assert (tiny_run.model_dir / "CARD.md").read_text().startswith("# Normalizing flow")
    assert (tiny_run.model_dir / "SHA256SUMS").is_file()
