"""LoRA files on a tiny diffusers UNet, checked against diffusers/peft and a hand-computed W + ΔW."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from imagesynth.diffusion.denoisers import EDMDenoiser
from imagesynth.diffusion.lora import (ATTENTION_TARGETS, ALL_TARGETS, apply_loras, fuse_loras,
                                       find_unet, lora_state_dict, loras_from_recipe,
                                       lora_recipe, parse_lora_spec, read_lora, save_lora)
from imagesynth.errors import ConfigError, IntegrityError, MissingFileError
from imagesynth.nets.unet import build_unet

TEXT_DIM = 32


def tiny_denoiser(seed: int = 0, widths=(16, 32)) -> EDMDenoiser:
    torch.manual_seed(seed)
    network = build_unet("tiny", TEXT_DIM, widths=widths)
    return EDMDenoiser(network, sigma_data=0.5).eval()


def inputs(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 16, 16, generator=generator)
    sigma = torch.tensor([0.7, 3.0])
    states = torch.randn(2, 5, TEXT_DIM, generator=generator)
    return x, sigma, {"encoder_hidden_states": states}


def output(denoiser, seed: int = 1) -> torch.Tensor:
    x, sigma, cond = inputs(seed)
    with torch.no_grad():
        return denoiser(x, sigma, **cond)


def random_lora_unet(denoiser, rank=4, alpha=8.0, targets=ATTENTION_TARGETS, seed=0):
    """A copy of the denoiser's UNet with a peft LoRA whose B is random (so the delta is not 0)."""
    unet = find_unet(denoiser)
    copy = UNet2DConditionModel.from_config(unet.config)
    copy.load_state_dict(unet.state_dict())
    copy.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                                init_lora_weights="gaussian"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in copy.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.2)
    return copy.eval()


def write_lora(path, denoiser, rank=4, alpha=8.0, targets="attn", seed=0, base_hash=None):
    unet = random_lora_unet(denoiser, rank, alpha, {"attn": ATTENTION_TARGETS,
                                                     "all": ALL_TARGETS}[targets], seed)
    save_lora(path, lora_state_dict(unet), rank=rank, alpha=alpha, targets=targets,
              base_model="tiny", base_model_hash=base_hash)
    return unet


def with_delta(denoiser, loras_and_weights) -> EDMDenoiser:
    """The reference: a plain copy whose weights are W + Σ w·(alpha/r)·B·A, computed by hand."""
    plain = tiny_denoiser()
    plain.load_state_dict(denoiser.state_dict())
    modules = dict(find_unet(plain).named_modules())
    with torch.no_grad():
        for lora, weight in loras_and_weights:
            for module in lora.modules:
                modules[module].weight += weight * lora.delta(module)
    return plain


def test_our_file_has_diffusers_keys_and_metadata(tmp_path):
    base = tiny_denoiser()
    write_lora(tmp_path / "a.safetensors", base, base_hash="ab" * 32)
    lora = read_lora(tmp_path / "a.safetensors")
    key = "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), "pt") as handle:
        assert key in handle.keys()
        metadata = handle.metadata()
    info = json.loads(metadata["imagesynth.config"])
    assert (info["rank"], info["alpha"], info["targets"], info["base_model_hash"]) == \
        (4, 8.0, "attn", "ab" * 32)
    assert json.loads(metadata["lora_adapter_metadata"])["unet.r"] == 4
    assert lora.source_format == "imagesynth" and set(lora.ranks.values()) == {4}


def test_our_file_loads_in_diffusers_with_equal_output(tmp_path):
    base = tiny_denoiser()
    write_lora(tmp_path / "a.safetensors", base)
    ours = apply_loras(base, [(read_lora(tmp_path / "a.safetensors"), 1.0)])

    # what `StableDiffusionPipeline.load_lora_weights` does: read file + metadata, load into the UNet
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

    state, alphas, metadata = Loader.lora_state_dict(str(tmp_path / "a.safetensors"),
                                                     return_lora_metadata=True)
    theirs = tiny_denoiser()
    theirs.load_state_dict(base.state_dict())
    Loader.load_lora_into_unet(state, alphas, find_unet(theirs), adapter_name="x",
                               metadata=metadata)
    assert torch.allclose(output(ours), output(theirs), atol=1e-6)
    assert not torch.allclose(output(ours), output(base), atol=1e-3)


def test_diffusers_saved_lora_loads_in_ours(tmp_path):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    base = tiny_denoiser()
    trained = random_lora_unet(base, rank=2, alpha=6.0, targets=ALL_TARGETS)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(trained),
        unet_lora_adapter_metadata={"r": 2, "lora_alpha": 6.0,
                                    "target_modules": list(ALL_TARGETS)})
    lora = read_lora(tmp_path / "pytorch_lora_weights.safetensors")
    assert lora.source_format == "diffusers" and set(lora.alphas.values()) == {6.0}
    reference = tiny_denoiser()
    reference.load_state_dict(base.state_dict())
    reference.network.unet = trained  # the peft-adapted UNet itself
    assert torch.allclose(output(apply_loras(base, [(lora, 1.0)])), output(reference), atol=1e-5)
    assert torch.allclose(output(apply_loras(base, [(lora, 1.0)])),
                          output(with_delta(base, [(lora, 1.0)])), atol=1e-5)


def test_weight_zero_is_the_base_exactly_and_base_is_untouched(tmp_path):
    base = tiny_denoiser()
    before = output(base)
    write_lora(tmp_path / "a.safetensors", base)
    zero = apply_loras(base, [(read_lora(tmp_path / "a.safetensors"), 0.0)])
    assert torch.equal(output(zero), before)
    assert torch.equal(output(base), before)


def test_two_stacked_loras_add_their_deltas(tmp_path):
    base = tiny_denoiser()
    write_lora(tmp_path / "a.safetensors", base, seed=1)
    write_lora(tmp_path / "b.safetensors", base, rank=2, alpha=2.0, targets="all", seed=2)
    pair = [(read_lora(tmp_path / "a.safetensors"), 0.7), (read_lora(tmp_path / "b.safetensors"),
                                                           -0.4)]
    stacked = output(apply_loras(base, pair))
    assert torch.allclose(stacked, output(with_delta(base, pair)), atol=1e-5)
    assert not torch.allclose(stacked, output(with_delta(base, pair[:1])), atol=1e-3)


def test_fused_equals_unfused(tmp_path):
    base = tiny_denoiser()
    write_lora(tmp_path / "a.safetensors", base, targets="all")
    pair = [(read_lora(tmp_path / "a.safetensors"), 0.8)]
    fused = fuse_loras(base, pair)
    assert not any("lora" in name for name in fused.state_dict())
    assert set(fused.state_dict()) == set(base.state_dict())
    assert torch.allclose(output(fused), output(apply_loras(base, pair)), atol=1e-5)


def kohya_copy(lora, path):
    """The same deltas in kohya-ss layout: lora_unet_<module with _>.lora_down/lora_up/alpha."""
    state = {}
    for module in lora.modules:
        name = "lora_unet_" + module.replace(".", "_")
        state[f"{name}.lora_down.weight"] = lora.tensors[f"{module}.lora_A.weight"]
        state[f"{name}.lora_up.weight"] = lora.tensors[f"{module}.lora_B.weight"]
        state[f"{name}.alpha"] = torch.tensor(lora.alphas[module])
    save_file(state, str(path))


@pytest.mark.parametrize("targets", ["attn", "all"])
def test_kohya_file_of_the_same_deltas_gives_the_same_output(tmp_path, targets):
    base = tiny_denoiser()
    write_lora(tmp_path / "a.safetensors", base, rank=3, alpha=1.5, targets=targets)
    ours = read_lora(tmp_path / "a.safetensors")
    kohya_copy(ours, tmp_path / "k.safetensors")
    kohya = read_lora(tmp_path / "k.safetensors")
    assert kohya.source_format == "kohya" and kohya.modules == ours.modules
    assert torch.allclose(output(apply_loras(base, [(kohya, 1.0)])),
                          output(apply_loras(base, [(ours, 1.0)])), atol=1e-6)


def test_lora_for_another_base_is_refused(tmp_path):
    base = tiny_denoiser()
    write_lora(tmp_path / "a.safetensors", base, base_hash="ab" * 32)
    lora = read_lora(tmp_path / "a.safetensors")
    with pytest.raises(ConfigError, match="was trained on 'tiny'") as error:
        apply_loras(base, [(lora, 1.0)], model_hash="cd" * 32)
    assert error.value.field == "lora"
    wider = tiny_denoiser(widths=(16, 48))
    with pytest.raises(ConfigError, match="adapts a") as error:
        apply_loras(wider, [(lora, 1.0)])
    assert "\n" not in error.value.one_line()
    shallow = EDMDenoiser(build_unet("tiny", TEXT_DIM, attention=(False, False)), sigma_data=0.5)
    with pytest.raises(ConfigError, match="which this model lacks"):
        apply_loras(shallow, [(lora, 1.0)])


def test_bad_rank_spec_and_missing_file_are_one_line_errors(tmp_path):
    base = tiny_denoiser()
    write_lora(tmp_path / "a.safetensors", base)
    lora = read_lora(tmp_path / "a.safetensors")
    broken = {f"unet.{k}": v for k, v in lora.tensors.items()}
    key = next(k for k in broken if k.endswith("lora_B.weight"))
    broken[key] = torch.zeros(broken[key].shape[0], 3)
    save_file(broken, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match="rank 4 in lora_A but 3") as error:
        read_lora(tmp_path / "bad.safetensors")
    assert error.value.field == "rank"
    with pytest.raises(ConfigError, match="is not FILE") as error:
        parse_lora_spec("style.safetensors:heavy")
    assert error.value.field == "lora"
    with pytest.raises(ConfigError, match="outside"):
        parse_lora_spec("style.safetensors:1e9")
    assert parse_lora_spec("style.safetensors:0.5").weight == 0.5
    assert parse_lora_spec("style.safetensors").weight == 1.0
    with pytest.raises(MissingFileError) as error:
        read_lora(tmp_path / "absent.safetensors")
    assert error.value.field == "lora"


def test_recipe_entries_round_trip_and_refuse_changed_files(tmp_path):
    base = tiny_denoiser()
    write_lora(tmp_path / "a.safetensors", base)
    entries = lora_recipe([(read_lora(tmp_path / "a.safetensors"), 0.5)])
    (lora, weight), = loras_from_recipe(entries)
    assert weight == 0.5 and lora.sha256 == entries[0]["sha256"]
    write_lora(tmp_path / "a.safetensors", base, seed=5)
    with pytest.raises(IntegrityError, match="changed"):
        loras_from_recipe(entries)
    (tmp_path / "a.safetensors").unlink()
    with pytest.raises(MissingFileError, match="missing"):
        loras_from_recipe(entries)
