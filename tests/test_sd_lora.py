"""LoRA files on Stable Diffusion equal diffusers' own `load_lora_weights` + `set_adapters`.

Our side: `SDPipeline(..., loras=[(FILE, weight)])` (adapters attached through `sd.lora.SDLoraSet`,
our Euler sampler and CFG). Their side: a fresh diffusers pipeline over identical tiny weights with
`load_lora_weights(FILE)` and `set_adapters`, `EulerDiscreteScheduler`, the same seed. LoRAs are
built with peft on the UNet and the text encoder(s), with random non-zero lora_B so they change
the output, and saved in diffusers' layout and in kohya-ss's.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sd_tiny import save_tiny_folder, tiny_pipeline

from imagesynth.errors import ConfigError, IntegrityError
from imagesynth.sd.detect import CheckpointInfo
from imagesynth.sd.lora import SDLoraSet, fold_alphas
from imagesynth.sd.pipeline import SDPipeline

TOLERANCE = 1e-4
PROMPT, NEGATIVE = "a red circle", "blurry"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def ours_over(pipe, kind: str) -> SDPipeline:
    info = CheckpointInfo(kind, "epsilon", False, "diffusers", "test")
    return SDPipeline(pipe, info, "tiny", "0" * 64, "cpu")


def generator(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_adapter(model, rank: int, alpha: float, targets, seed: int) -> dict:
    """peft LoRA tensors (no prefix) for `model`, lora_A and lora_B both random and non-zero."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)),
                      adapter_name="make")
    generator_ = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, value in get_peft_model_state_dict(model, adapter_name="make").items():
        tensors[key] = torch.randn(value.shape, generator=generator_) * 0.3
    return tensors


def lora_tensors(kind: str, *, rank=4, alpha=2.0, text=True, seed=0) -> dict[str, dict]:
    """{"unet": ..., "text_encoder": ..., ["text_encoder_2": ...]} LoRA tensors for `kind`."""
    donor = tiny_pipeline(kind)  # a throwaway copy: the adapters are only read off it
    layers = {"unet": random_adapter(donor.unet, rank, alpha, UNET_TARGETS, seed)}
    if text:
        layers["text_encoder"] = random_adapter(donor.text_encoder, rank, alpha, TEXT_TARGETS,
                                                seed + 1)
        if kind == "sdxl":
            layers["text_encoder_2"] = random_adapter(donor.text_encoder_2, rank, alpha,
                                                      TEXT_TARGETS, seed + 2)
    return layers


def save_diffusers(folder, kind: str, layers: dict, *, rank=4, alpha=2.0, name="lora"):
    """diffusers' own `save_lora_weights`, with the peft config as adapter metadata."""
    pipe_cls = type(tiny_pipeline(kind))
    targets = {"unet": UNET_TARGETS, "text_encoder": TEXT_TARGETS, "text_encoder_2": TEXT_TARGETS}
    kwargs = {}
    for component, tensors in layers.items():
        kwargs[f"{component}_lora_layers"] = tensors
        kwargs[f"{component}_lora_adapter_metadata"] = {
            "r": rank, "lora_alpha": alpha, "target_modules": targets[component]}
    pipe_cls.save_lora_weights(folder, weight_name=f"{name}.safetensors", **kwargs)
    return folder / f"{name}.safetensors"


def save_kohya(path, layers: dict, *, alpha=2.0):
    """The same adapter in kohya-ss layout: lora_unet_/lora_te_<module, _ for .>.lora_down/up."""
    state = {}
    for component, prefix, extra in (("unet", "lora_unet_", ""),
                                     ("text_encoder", "lora_te_", "text_model.")):
        for key, value in layers.get(component, {}).items():
            module, _, part = key.rpartition(".lora_")
            name = prefix + (extra + module).replace(".", "_")
            kind = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[part]
            state[f"{name}.{kind}"] = value.contiguous()
            state[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(state, str(path))
    return path


def run_ours(ours, loras=None):
    return ours(PROMPT, negative_prompt=NEGATIVE, seed=3, num_steps=3, sampler="euler",
                guidance_scale=5.0, size=64, loras=loras).samples


def run_diffusers(kind: str, files_and_weights):
    """A fresh diffusers pipeline over the same tiny weights with the LoRAs loaded its own way."""
    reference = tiny_pipeline(kind)
    names = []
    for index, (path, _) in enumerate(files_and_weights):
        reference.load_lora_weights(str(path), adapter_name=f"ref{index}")
        names.append(f"ref{index}")
    reference.set_adapters(names, adapter_weights=[w for _, w in files_and_weights])
    return reference(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=3,
                     guidance_scale=5.0, generator=generator(), height=64, width=64,
                     output_type="latent").images


def test_diffusers_file_on_sd1_equals_diffusers_unet_and_text_encoder(tmp_path):
    layers = lora_tensors("sd1")
    path = save_diffusers(tmp_path, "sd1", layers)
    ours = ours_over(tiny_pipeline("sd1"), "sd1")
    base = run_ours(ours)
    base_states, _ = ours._encode_one(PROMPT)
    with_lora = run_ours(ours, [(path, 0.7)])
    assert (with_lora - run_diffusers("sd1", [(path, 0.7)])).abs().max() < TOLERANCE
    assert (with_lora - base).abs().max() > 1e-2  # the LoRA does change the image
    lora_states, _ = ours._encode_one(PROMPT)  # and the text encoder is adapted too
    assert (lora_states - base_states).abs().max() > 1e-3
    result = ours(PROMPT, seed=3, num_steps=2, size=64, loras=[(path, 0.7)])
    (entry,) = result.recipes[0]["loras"]
    assert entry["file"] == str(path.resolve()) and entry["weight"] == 0.7
    assert entry["format"] == "diffusers" and entry["components"] == ["unet", "text_encoder"]


def test_kohya_file_equals_diffusers_and_the_diffusers_file(tmp_path):
    layers = lora_tensors("sd1", rank=3, alpha=1.5, seed=4)
    kohya = save_kohya(tmp_path / "kohya.safetensors", layers, alpha=1.5)
    same = save_diffusers(tmp_path, "sd1", layers, rank=3, alpha=1.5)
    ours = ours_over(tiny_pipeline("sd1"), "sd1")
    from_kohya = run_ours(ours, [(kohya, 0.7)])
    assert (from_kohya - run_diffusers("sd1", [(kohya, 0.7)])).abs().max() < TOLERANCE
    assert (from_kohya - run_ours(ours, [(same, 0.7)])).abs().max() < TOLERANCE
    entry = ours(PROMPT, seed=3, num_steps=2, size=64,
                 loras=[(kohya, 0.7)]).recipes[0]["loras"][0]
    assert entry["format"] == "kohya" and entry["components"] == ["unet", "text_encoder"]


@pytest.mark.parametrize("text", [False, True])
def test_sdxl_lora_equals_diffusers(tmp_path, text):
    path = save_diffusers(tmp_path, "sdxl", lora_tensors("sdxl", text=text, seed=7))
    ours = ours_over(tiny_pipeline("sdxl"), "sdxl")
    with_lora = run_ours(ours, [(path, 0.7)])
    assert (with_lora - run_diffusers("sdxl", [(path, 0.7)])).abs().max() < TOLERANCE
    assert (with_lora - run_ours(ours)).abs().max() > 1e-2


def test_two_stacked_loras_then_none_is_the_base_exactly(tmp_path):
    first = save_diffusers(tmp_path, "sd1", lora_tensors("sd1", seed=1), name="first")
    second = save_diffusers(tmp_path, "sd1", lora_tensors("sd1", rank=2, alpha=4.0, text=False,
                                                          seed=2), rank=2, alpha=4.0,
                            name="second")
    ours = ours_over(tiny_pipeline("sd1"), "sd1")
    base = run_ours(ours)
    stack = [(first, 0.7), (second, -0.4)]
    stacked = run_ours(ours, stack)
    assert (stacked - run_diffusers("sd1", stack)).abs().max() < TOLERANCE
    only_first = run_ours(ours, stack[:1])
    assert (stacked - only_first).abs().max() > 1e-2  # the second one counts
    assert torch.equal(run_ours(ours, []), base)
    assert torch.equal(run_ours(ours), base)
    assert torch.equal(run_ours(ours, stack[:1]), only_first)  # re-enabled after `[]`


def test_fused_equals_unfused_and_unfusing_restores_the_base_exactly(tmp_path):
    path = save_diffusers(tmp_path, "sd1", lora_tensors("sd1", seed=3))
    ours = ours_over(tiny_pipeline("sd1"), "sd1")
    base = run_ours(ours)
    unfused = run_ours(ours, [(path, 0.6)])
    to_q = ours.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    before = to_q.get_base_layer().weight.detach().clone()
    ours._lora_set.fuse([(path, 0.6)])
    assert not torch.equal(to_q.get_base_layer().weight, before)  # folded into the weight
    assert (run_ours(ours, [(path, 0.6)]) - unfused).abs().max() < TOLERANCE  # stays fused
    ours._lora_set.unfuse()
    assert torch.equal(to_q.get_base_layer().weight, before)
    assert torch.equal(run_ours(ours, []), base)


def test_a_lora_for_another_base_is_one_line_and_leaves_the_model_unchanged(tmp_path):
    sdxl_lora = save_diffusers(tmp_path, "sdxl", lora_tensors("sdxl", text=False), name="xl")
    ours = ours_over(tiny_pipeline("sd1"), "sd1")
    base = run_ours(ours)
    with pytest.raises(ConfigError) as error:
        run_ours(ours, [(sdxl_lora, 1.0)])
    line = error.value.one_line()
    assert error.value.field == "lora" and "\n" not in line
    assert "xl.safetensors" in line and "unet.down_blocks.0" in line and "attn2.to_k" in line
    assert torch.equal(run_ours(ours), base)

    # SDXL's second text encoder on SD 1.x: a component this model lacks
    xl_text = save_diffusers(tmp_path, "sdxl", lora_tensors("sdxl"), name="xl_text")
    with pytest.raises(ConfigError, match="xl_text.safetensors.*text_encoder_2"):
        run_ours(ours, [(xl_text, 1.0)])

    # a file whose lora_A and lora_B disagree on the rank
    layers = lora_tensors("sd1")
    key = next(k for k in layers["unet"] if k.endswith("to_q.lora_B.weight"))
    layers["unet"][key] = layers["unet"][key][:, :3].contiguous()
    broken = save_kohya(tmp_path / "broken.safetensors", layers)
    with pytest.raises(ConfigError, match="broken.safetensors") as error:
        run_ours(ours, [(broken, 1.0)])
    assert error.value.field == "lora" and "to_q" in error.value.message
    assert torch.equal(run_ours(ours), base)


def test_misfits_reported_while_loading_delete_the_half_loaded_adapter(tmp_path):
    """The loader's own reports (peft's unexpected-key warning, a size-mismatch error) are
    refused too, with the adapter removed from every component."""
    ours = ours_over(tiny_pipeline("sd1"), "sd1")
    base = run_ours(ours)
    lora_set = SDLoraSet(ours.pipe, ours.info, ours.model_hash)
    layers = lora_tensors("sd1")
    good = {f"unet.{k}": v for k, v in layers["unet"].items()}
    good.update({f"text_encoder.{k}": v for k, v in layers["text_encoder"].items()})
    stray = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_nowhere"
    warned = {**good, f"{stray}.lora_A.weight": torch.ones(4, 32),
              f"{stray}.lora_B.weight": torch.ones(32, 4)}
    with pytest.raises(ConfigError, match="w.safetensors does not fit this model: .*to_nowhere"):
        lora_set._attach(tmp_path / "w.safetensors", warned, "bad")
    wrong_text = dict(good)
    text_key = next(k for k in good if k.startswith("text_encoder.") and "lora_A" in k)
    wrong_text[text_key] = torch.ones(4, 7)
    with pytest.raises(ConfigError, match="(?i)m.safetensors does not fit this model: "
                                          ".*lora_A.*mismatch"):
        lora_set._attach(tmp_path / "m.safetensors", wrong_text, "bad")
    for component in ("unet", "text_encoder"):
        model = getattr(ours.pipe, component)
        assert "bad" not in getattr(model, "peft_config", {})
        assert not any("bad" in name for name, _ in model.named_parameters())
    assert torch.equal(run_ours(ours), base)


def test_saved_alphas_are_folded_as_peft_scales():
    state = {"unet.a.lora_A.weight": torch.ones(4, 3), "unet.a.lora_B.weight": torch.ones(5, 4),
             "unet.b.lora_B.weight": torch.ones(5, 2),
             "text_encoder.c.lora_B.weight": torch.ones(5, 4)}
    metadata = {"lora_adapter_metadata": '{"unet.lora_alpha": 8, "unet.r": 4, '
                                         '"unet.alpha_pattern": {"b": 1}}'}
    folded = fold_alphas(state, metadata)
    assert folded["unet.a.lora_B.weight"][0, 0] == 2.0  # 8 / 4
    assert folded["unet.b.lora_B.weight"][0, 0] == 0.5  # pattern alpha 1 / rank 2
    assert folded["unet.a.lora_A.weight"] is state["unet.a.lora_A.weight"]
    assert folded["text_encoder.c.lora_B.weight"] is state["text_encoder.c.lora_B.weight"]


def test_an_image_made_with_an_sd_lora_reproduces(tmp_path):
    from imagesynth.generation import reproduce_image
    from imagesynth.io.pngmeta import save_png
    from imagesynth.pipeline import load_pipeline
    from imagesynth.registry import Registry

    folder = save_tiny_folder(tmp_path / "tiny-sd1-lora", "sd1")
    Registry().add(folder, name="tiny-sd1-lora")
    path = save_diffusers(tmp_path, "sd1", lora_tensors("sd1", seed=5))
    kohya = save_kohya(tmp_path / "kohya.safetensors", lora_tensors("sd1", seed=6))
    pipe = load_pipeline("tiny-sd1-lora", device="cpu")
    plain = pipe(PROMPT, seed=1, num_steps=3)
    result = pipe(PROMPT, seed=1, num_steps=3, loras=[(path, 0.8), (kohya, 0.5)])
    assert result.images[0].tobytes() != plain.images[0].tobytes()
    assert [e["sha256"] for e in result.recipes[0]["loras"]] == [
        pipe._lora_set.load(path).sha256, pipe._lora_set.load(kohya).sha256]
    out = tmp_path / "out.png"
    save_png(result.images[0], out, result.recipes[0])
    assert reproduce_image(out).identical
    save_kohya(kohya, lora_tensors("sd1", seed=9))  # the file changes: the hash check refuses it
    with pytest.raises(IntegrityError, match="kohya.safetensors changed"):
        reproduce_image(out)
