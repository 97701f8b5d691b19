"""Autoregressive family: VQ codebook, KV cache, seeds, guidance, top-k/p, errors, model folders."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from imagesynth.config import to_dict
from imagesynth.data.folder import CaptionedImageFolder
from imagesynth.diffusion.noise import generators_from_seeds
from imagesynth.errors import ConfigError, InputImageError
from imagesynth.families import GeneratorFamily, LatentFamily
from imagesynth.families.ar import (ARModel, ar_config, load_ar, tokenizer_config,
                                    tokenizer_metrics, train_ar)
from imagesynth.io.checkpoint import load_weights
from imagesynth.nets.ar_transformer import KVCache, draw_tokens, filter_logits
from imagesynth.train.datasets import ImageTensorSet, to_signed, to_uint8
from imagesynth.metrics.psnr import psnr
from imagesynth.nets.vq import VectorQuantizer
from imagesynth.registry import write_model_folder

PROMPTS = ["a red circle", "a blue square on the left", "a green triangle above a black circle"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the 2 shared cores run these tiny nets faster without contention."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def shapes16(shapes_folder):
    """A 16 px ShapesWorld folder (200 images, 7 of them in the val split)."""
    return shapes_folder(200)


@pytest.fixture(scope="module")
def tiny_run(shapes16, minilm, tmp_path_factory):
    """Both stages of the tiny preset (80 tokenizer + 60 transformer steps) on `shapes16`."""
    return train_ar(shapes16, tmp_path_factory.mktemp("ar-run"), preset="tiny",
                    text_encoder=minilm, show_progress=False)


@pytest.fixture(scope="module")
def trained(tiny_run, minilm):
    """The tiny run's saved model, loaded back."""
    return load_ar(tiny_run.model_dir, text_encoder=minilm)


@pytest.fixture(scope="module")
def random_model(minilm):
    """A tiny ar model with seeded random weights and the real empty-caption prefix."""
    torch.manual_seed(0)
    model = ARModel(tokenizer_config("tiny"), ar_config("tiny"), text_encoder=minilm)
    empty = minilm([""])
    model.set_empty_caption(empty.states, empty.mask)
    return model.eval()


def incremental_logits(transformer, tokens, cond):
    """Logits [B, N, V] of a finished grid, fed through the KV cache one token at a time."""
    cache = KVCache()
    rows = [transformer(tokens[:, :0], cond, cache)]
    rows += [transformer(tokens[:, j:j + 1], None, cache) for j in range(tokens.shape[1] - 1)]
    return torch.cat(rows, 1)


@pytest.mark.parametrize("which", ["random", "trained"])
def test_kv_cache_sampling_equals_uncached_token_for_token(which, random_model, trained):
    model = random_model if which == "random" else trained
    cond = model.condition_for(PROMPTS, 3)
    assert not cond[1].all()  # the prompts differ in length: padding is exercised
    for guidance in (1.0, 3.0):
        uncond = None if guidance == 1.0 else model.unconditional(3)
        cached = draw_tokens(model.transformer, cond, generators_from_seeds([1, 2, 3]),
                             uncond=uncond, guidance_scale=guidance)
        plain = draw_tokens(model.transformer, cond, generators_from_seeds([1, 2, 3]),
                            uncond=uncond, guidance_scale=guidance, use_cache=False)
        assert cached.shape == (3, 16) and torch.equal(cached, plain)
    with torch.no_grad():
        full = model.transformer(cached[:, :-1], cond)  # one pass, every position at once
        stepped = incremental_logits(model.transformer, cached, cond)
    assert full.shape == stepped.shape == (3, 16, 32)
    assert (full - stepped).abs().max() < 1e-5
    assert full.std() > 0.01  # the logits are not constant, so agreement means something


def test_same_seed_gives_the_same_bytes_and_batching_changes_nothing(trained):
    for guidance in (1.0, 3.0):
        batch = trained.sample(3, generators_from_seeds([5, 6, 7]), PROMPTS,
                               guidance_scale=guidance)
        again = trained.sample(3, generators_from_seeds([5, 6, 7]), PROMPTS,
                               guidance_scale=guidance)
        alone = trained.sample(1, generators_from_seeds([6]), PROMPTS[1:2],
                               guidance_scale=guidance)
        assert batch.shape == (3, 3, 16, 16) and batch.min() >= -1 and batch.max() <= 1
        assert to_uint8(batch).numpy().tobytes() == to_uint8(again).numpy().tobytes()
        assert to_uint8(batch[1:2]).numpy().tobytes() == to_uint8(alone).numpy().tobytes()
    tokens = trained.sample_tokens(2, generators_from_seeds([5, 8]), "a red circle")
    assert not torch.equal(tokens[0], tokens[1])  # different seeds, different images


def test_guidance_one_is_plain_conditional_and_zero_is_unconditional(trained):
    cond, uncond = trained.condition_for(PROMPTS, 3), trained.unconditional(3)
    plain = draw_tokens(trained.transformer, cond, generators_from_seeds([0, 1, 2]))
    at_one = draw_tokens(trained.transformer, cond, generators_from_seeds([0, 1, 2]),
                         uncond=uncond, guidance_scale=1.0)
    assert torch.equal(plain, at_one)  # l_u + 1 (l_c - l_u) = l_c, with both branches run
    at_zero = draw_tokens(trained.transformer, cond, generators_from_seeds([0, 1, 2]),
                          uncond=uncond, guidance_scale=0.0)
    unconditional = trained.sample_tokens(3, generators_from_seeds([0, 1, 2]), None)
    assert torch.equal(at_zero, unconditional)
    guided = trained.sample_tokens(3, generators_from_seeds([0, 1, 2]), PROMPTS,
                                   guidance_scale=4.0)
    assert not torch.equal(guided, plain)  # guidance changes the draw


def test_top_k_one_equals_greedy_decoding(trained):
    cond = trained.condition_for(PROMPTS[:2], 2)
    greedy = torch.zeros(2, 0, dtype=torch.long)
    with torch.no_grad():  # an independent reference: full forward passes, argmax each time
        for _ in range(16):
            logits = trained.transformer(greedy, cond)[:, -1]
            greedy = torch.cat([greedy, logits.argmax(-1, keepdim=True)], 1)
    for seeds in ([0, 1], [7, 9]):
        drawn = trained.sample_tokens(2, generators_from_seeds(seeds), PROMPTS[:2], top_k=1)
        assert torch.equal(drawn, greedy)
    sampled = trained.sample_tokens(2, generators_from_seeds([0, 1]), PROMPTS[:2])
    assert not torch.equal(sampled, greedy)


def test_filter_logits_keeps_the_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3]]))
    kept = lambda out: torch.isfinite(out[0]).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [1, 3]
    assert kept(filter_logits(logits, top_p=0.5)) == [1, 3]  # 0.4 < 0.5 <= 0.4 + 0.3
    assert kept(filter_logits(logits, top_p=0.4)) == [1]
    assert kept(filter_logits(logits, top_p=0.75)) == [1, 2, 3]
    assert kept(filter_logits(logits, top_p=1.0)) == [0, 1, 2, 3]
    assert torch.allclose(filter_logits(logits, temperature=0.5), logits * 2)


def _quantizer_with(codebook: torch.Tensor, decay: float, dead_after: int) -> VectorQuantizer:
    quantizer = VectorQuantizer(len(codebook), codebook.shape[1], decay, dead_after)
    quantizer.codebook.copy_(codebook)
    quantizer.code_sum.copy_(codebook)
    quantizer.cluster_size.fill_(1.0)
    quantizer.unused_steps.zero_()  # no code starts dead
    return quantizer.train()


def test_ema_codebook_moves_codes_toward_their_assigned_encoder_outputs():
    quantizer = _quantizer_with(torch.tensor([[0.0, 0.0], [10.0, 10.0]]), 0.8, 100)
    z = torch.tensor([[1.0, 1.0], [1.5, 0.5], [0.5, 1.5], [1.0, 1.0]])  # all nearest code 0
    out = quantizer(z.t().reshape(1, 2, 2, 2), torch.Generator().manual_seed(0))
    assert out.codes.flatten().tolist() == [0, 0, 0, 0]
    # eqs. 6-8 by hand: N_0 = 0.8 * 1 + 0.2 * 4, m_0 = 0.8 * 0 + 0.2 * sum(z)
    expected = 0.2 * z.sum(0) / 1.6
    assert torch.allclose(quantizer.codebook[0], expected, atol=1e-4)
    assert torch.allclose(quantizer.codebook[1], torch.tensor([10.0, 10.0]), atol=1e-3)
    assert torch.equal(out.z_q, torch.zeros(1, 2, 2, 2))  # forward value: the code as picked
    before = (torch.tensor([0.0, 0.0]) - z.mean(0)).norm()
    for _ in range(60):
        quantizer(z.t().reshape(1, 2, 2, 2), torch.Generator().manual_seed(0))
    assert (quantizer.codebook[0] - z.mean(0)).norm() < 1e-3 < before
    assert quantizer.unused_steps.tolist() == [0, 61]


def test_straight_through_passes_gradients_to_the_encoder_outputs():
    quantizer = _quantizer_with(torch.tensor([[0.0, 0.0], [10.0, 10.0]]), 0.5, 100).eval()
    z = torch.tensor([[[[1.0]], [[2.0]]]], requires_grad=True)  # [1, 2, 1, 1]
    out = quantizer(z)
    assert torch.equal(out.z_q.detach(), torch.zeros(1, 2, 1, 1))
    (out.z_q * torch.tensor([3.0, 4.0])[None, :, None, None]).sum().backward()
    assert z.grad.flatten().tolist() == [3.0, 4.0]
    assert out.commitment.item() == pytest.approx((1 + 4) / 2)


def test_a_dead_code_is_restarted_from_the_batch_with_the_step_generator():
    quantizer = _quantizer_with(torch.tensor([[0.0, 0.0], [50.0, 50.0]]), 0.9, 2)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1, 2, 3, 3, generator=generator)  # every vector picks code 0
    for _ in range(2):
        assert quantizer(z, generator).restarted == 0
    assert quantizer.unused_steps[1] == 2
    state = {k: v.clone() for k, v in quantizer.state_dict().items()}
    out = quantizer(z, torch.Generator().manual_seed(1))
    assert out.restarted == 1
    rows = z.permute(0, 2, 3, 1).reshape(-1, 2)
    restarted = quantizer.codebook[1]
    assert (rows - restarted).norm(dim=1).min() < 0.2  # one of this batch's vectors (then EMA)
    assert (restarted - torch.tensor([50.0, 50.0])).norm() > 40
    assert out.codes.unique().numel() == 2  # the restarted code is picked at once
    replay = VectorQuantizer(2, 2, 0.9, 2).train()
    replay.load_state_dict(state)
    replay(z, torch.Generator().manual_seed(1))  # same generator: same restart (exact resume)
    assert torch.equal(replay.codebook, quantizer.codebook)
    with pytest.raises(ConfigError) as missing:
        quantizer(z)
    assert missing.value.field == "generator"


def test_tokenizer_round_trip_reaches_the_psnr_threshold(tiny_run, trained, shapes16):
    images = ImageTensorSet(CaptionedImageFolder(shapes16, resolution=16, split="train")).images
    reconstructed = to_uint8(trained.decode(trained.encode(to_signed(images))))
    mean_image = images.float().mean(0, keepdim=True).round().to(torch.uint8)
    baseline = psnr(images, mean_image.expand_as(images))
    assert baseline < 15.0
    assert psnr(images, reconstructed) > 17.0  # the mean image scores ~14.6
    untrained = ARModel(tokenizer_config("tiny"), ar_config("tiny")).eval()
    assert tokenizer_metrics(untrained.tokenizer, images)["psnr"] < 12.0
    metrics = tiny_run.metrics
    assert metrics["psnr_val"] > 16.0 and 0.3 < metrics["codebook_usage_val"] <= 1.0
    assert 4.0 < metrics["perplexity_train"] <= 32.0
    # cross-entropy well below the uniform log K = 3.47 nats per token
    assert metrics["val_loss"] < math.log(32) - 0.5 and metrics["train_loss"] < metrics["val_loss"]


def test_encode_decode_and_the_family_interface(trained, shapes16):
    images = to_signed(ImageTensorSet(CaptionedImageFolder(shapes16, resolution=16,
                                                           split="val")).images)
    tokens = trained.encode(images)
    assert tokens.shape == (7, 4, 4) and tokens.dtype == torch.long
    assert torch.equal(tokens, trained.encode(images))
    assert torch.equal(trained.decode(tokens), trained.decode(tokens.flatten(1)))
    again = trained.encode(trained.decode(tokens))  # decoded codes mostly re-encode to themselves
    assert (again == tokens).float().mean() > 0.6
    assert isinstance(trained, LatentFamily) and isinstance(trained, GeneratorFamily)
    assert trained.family == "ar" and trained.has_latent and trained.image_size == 16


def test_precomputed_states_condition_like_their_prompts(trained, minilm):
    encoding = minilm(PROMPTS)
    from_prompts = trained.sample_tokens(3, generators_from_seeds([3, 4, 5]), PROMPTS)
    from_states = trained.sample_tokens(3, generators_from_seeds([3, 4, 5]), encoding.states)
    from_encoding = trained.sample_tokens(3, generators_from_seeds([3, 4, 5]), encoding)
    assert torch.equal(from_prompts, from_states) and torch.equal(from_prompts, from_encoding)


@pytest.mark.parametrize("setting, field", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"), (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(guidance_scale=-0.5), "guidance"),
    (dict(condition=torch.zeros(1, 4, 7)), "condition"), (dict(condition=["a", "b"]), "condition"),
])
def test_bad_sampling_settings_name_their_fields(random_model, setting, field):
    with pytest.raises(ConfigError) as error:
        random_model.sample(3, generators_from_seeds([0, 1, 2]), **setting)
    assert error.value.field == field and "\n" not in str(error.value)


def test_bad_data_presets_and_latents_name_their_fields(shapes_folder, random_model, tmp_path):
    with pytest.raises(ConfigError) as small:
        train_ar(shapes_folder(30), tmp_path / "run", preset="tiny", show_progress=False)
    assert small.value.field == "data" and "at least 32" in str(small.value)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError) as preset:
        ar_config("huge")
    assert preset.value.field == "preset"
    with pytest.raises(ConfigError) as size:
        tokenizer_config("tiny", image_size=18)
    assert size.value.field == "image_size"
    with pytest.raises(InputImageError) as tokens:
        random_model.decode(torch.full((1, 4, 4), 32))
    assert tokens.value.field == "latents"
    with pytest.raises(InputImageError) as images:
        random_model.encode(torch.zeros(1, 3, 8, 8))
    assert images.value.field == "images"


def test_saved_model_folder_loads_back_and_samples_identically(tmp_path, random_model,
                                                               tiny_run, minilm):
    folder = write_model_folder(tmp_path / "ar", random_model.state_dict(),
                                {"family": "ar", "tokenizer": to_dict(random_model.tokenizer_config),
                                 "transformer": to_dict(random_model.config)}, "# test\n")
    loaded = load_ar(folder, text_encoder=minilm)
    for condition in (None, PROMPTS):
        expected = random_model.sample(3, generators_from_seeds([11, 12, 13]), condition,
                                       guidance_scale=2.0, top_p=0.9)
        assert torch.equal(loaded.sample(3, generators_from_seeds([11, 12, 13]), condition,
                                         guidance_scale=2.0, top_p=0.9), expected)
    written = json.loads((tiny_run.model_dir / "config.json").read_text())
    assert written["family"] == "ar" and written["tokenizer"]["num_codes"] == 32
    assert written["transformer"] == to_dict(ar_config("tiny"))
    assert (tiny_run.model_dir / "CARD.md").read_text().startswith("# Autoregressive")
    assert (tiny_run.model_dir / "SHA256SUMS").is_file()
    assert (tiny_run.model_dir.parent / "tokenizer" / "model" / "config.json").is_file()


def test_transformer_stage_resumes_exactly_on_the_frozen_tokenizer(tiny_run, shapes16, minilm,
                                                                     tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(tiny_run.model_dir.parent / "tokenizer", run / "tokenizer")
    first = train_ar(shapes16, run, preset="tiny", text_encoder=minilm, show_progress=False,
                     stop_after=25)
    assert first.stopped == "time_budget" and first.steps == 25
    second = train_ar(shapes16, run, preset="tiny", text_encoder=minilm, show_progress=False)
    assert second.stopped == "finished" and second.steps == 60
    # the frozen tokenizer was reused, not retrained
    assert (run / "tokenizer" / "model" / "model.safetensors").read_bytes() == \
        (tiny_run.model_dir.parent / "tokenizer" / "model" / "model.safetensors").read_bytes()
    assert first.metrics["psnr_val"] == tiny_run.metrics["psnr_val"]
    resumed = load_weights(second.model_dir / "model.safetensors")
    reference = load_weights(tiny_run.model_dir / "model.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert second.metrics["val_loss"] == pytest.approx(tiny_run.metrics["val_loss"], abs=1e-9)
