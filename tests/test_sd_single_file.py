"""SD single-file checkpoints: written in the original key layout, detected, loaded back exactly."""

from __future__ import annotations

import shutil
import socket

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sd_tiny import save_tiny_folder, tiny_pipeline

from imagesynth.errors import ConfigError
from imagesynth.sd.detect import detect_folder, detect_single_file
from imagesynth.sd.single_file import (convert_unet_to_original, convert_vae_to_original,
                                       load_single_file, save_single_file)

CASES = [("sd1", False), ("sd2", False), ("sdxl", False), ("sd1", True)]
EXPECTED_PREDICTION = {"sd1": "epsilon", "sd2": "v_prediction", "sdxl": "epsilon"}
UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"

# real key names of the original checkpoints that the tiny models share (same block positions)
COMMON_KEYS = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.time_embed.0.weight",
    "model.diffusion_model.time_embed.2.bias",
    "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
    "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.input_blocks.3.0.op.weight",
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
    "model.diffusion_model.middle_block.0.out_layers.3.weight",
    "model.diffusion_model.middle_block.1.proj_in.weight",
    "model.diffusion_model.middle_block.2.in_layers.2.weight",
    "model.diffusion_model.output_blocks.2.1.conv.weight",
    "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.ff.net.2.weight",
    "model.diffusion_model.out.0.weight",
    "model.diffusion_model.out.2.weight",
    "first_stage_model.encoder.conv_in.weight",
    "first_stage_model.encoder.down.0.block.0.conv1.weight",
    "first_stage_model.encoder.down.0.downsample.conv.weight",
    "first_stage_model.encoder.down.2.block.0.nin_shortcut.weight",
    "first_stage_model.encoder.mid.block_1.norm1.weight",
    "first_stage_model.encoder.norm_out.weight",
    "first_stage_model.decoder.mid.attn_1.q.weight",
    "first_stage_model.decoder.mid.attn_1.proj_out.weight",
    "first_stage_model.decoder.mid.attn_1.norm.weight",
    "first_stage_model.decoder.up.3.upsample.conv.weight",
    "first_stage_model.decoder.up.0.block.1.conv2.weight",
    "first_stage_model.quant_conv.weight",
    "first_stage_model.post_quant_conv.weight",
]
TEXT_KEYS = {
    "sd1": ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
            "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
            "cond_stage_model.transformer.text_model.encoder.layers.2.mlp.fc2.bias",
            "cond_stage_model.transformer.text_model.final_layer_norm.weight"],
    "sd2": ["cond_stage_model.model.token_embedding.weight",
            "cond_stage_model.model.positional_embedding",
            "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
            "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias",
            "cond_stage_model.model.transformer.resblocks.0.attn.out_proj.weight",
            "cond_stage_model.model.transformer.resblocks.1.ln_1.weight",
            "cond_stage_model.model.transformer.resblocks.2.mlp.c_fc.weight",
            "cond_stage_model.model.transformer.resblocks.2.mlp.c_proj.bias",
            "cond_stage_model.model.ln_final.weight"],
    "sdxl": ["model.diffusion_model.label_emb.0.0.weight",
             "model.diffusion_model.label_emb.0.2.bias",
             "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
             "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
             "conditioner.embedders.1.model.token_embedding.weight",
             "conditioner.embedders.1.model.positional_embedding",
             "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
             "conditioner.embedders.1.model.transformer.resblocks.2.mlp.c_fc.weight",
             "conditioner.embedders.1.model.ln_final.weight",
             "conditioner.embedders.1.model.text_projection"],
}
# diffusers-only names that must not survive in an original-layout file, by key prefix
DIFFUSERS_NAMES = {
    "": ("down_blocks", "up_blocks", "mid_block", "resnets", "conv_norm_out", "time_embedding",
         "add_embedding", "attentions", "downsamplers", "upsamplers"),
    "first_stage_model.": ("to_q", "to_out", "group_norm", "conv_shortcut"),
    "model.diffusion_model.": (".conv1.", ".conv2.", "time_emb_proj", "conv_shortcut"),
    "cond_stage_model.model.": ("q_proj", "encoder.layers", "fc1", "layer_norm", "text_model"),
    "conditioner.embedders.1.model.": ("q_proj", "encoder.layers", "fc1", "layer_norm",
                                       "text_model"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny diffusers folders per (kind, inpaint), built on first use."""
    root, built = tmp_path_factory.mktemp("sd-folders"), {}

    def get(kind: str, inpaint: bool = False):
        if (kind, inpaint) not in built:
            built[kind, inpaint] = save_tiny_folder(root / f"{kind}-{inpaint}", kind,
                                                    inpaint=inpaint)
        return built[kind, inpaint]

    return get


@pytest.fixture
def offline(monkeypatch):
    """Hub offline mode plus a socket layer that refuses any internet connection."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    real_connect = socket.socket.connect

    def refuse(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *args, **kwargs:
                        pytest.fail(f"network access attempted: {address}"))


def _keys(path):
    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys())


def _realign(pipe) -> None:
    """Give every weight fresh memory; values are unchanged.

    safetensors maps tensors at arbitrary byte offsets, and CPU BLAS sums unaligned data in
    another order (1e-7 noise, amplified by CFG), whichever of the two pipelines it hits.
    """
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        for tensor in [] if module is None else [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()


def _run(pipe, inpaint: bool) -> torch.Tensor:
    _realign(pipe)
    extra = {}
    if inpaint:
        image = Image.new("RGB", (64, 64), (200, 40, 40))
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))
        extra = {"image": image, "mask_image": mask}
    with torch.no_grad():
        return pipe("a red square", num_inference_steps=2, height=64, width=64,
                    generator=torch.Generator().manual_seed(0), output_type="pt", **extra).images


@pytest.mark.parametrize("kind,inpaint", CASES)
def test_single_file_round_trip_is_exact(kind, inpaint, folders, tmp_path, offline):
    from diffusers import DiffusionPipeline

    folder = folders(kind, inpaint)
    path = save_single_file(folder, tmp_path / f"{kind}.safetensors")
    info = detect_single_file(path)
    assert (info.arch, info.prediction, info.inpaint, info.layout) == (
        kind, EXPECTED_PREDICTION[kind], inpaint, "single_file")
    assert kind in info.reason
    pipe, loaded_info = load_single_file(path, config=folder)
    assert loaded_info == info
    reference = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert type(pipe) is type(reference)
    assert pipe.scheduler.config.prediction_type == EXPECTED_PREDICTION[kind]
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if kind == "sdxl" else [])
    for name in names:
        ours, theirs = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name
    ours, theirs = _run(pipe, inpaint), _run(reference, inpaint)
    assert ours.shape == (1, 3, 64, 64) and ours.std() > 0
    assert (ours - theirs).abs().max().item() <= 1e-6


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_written_keys_follow_the_original_layout(kind, folders, tmp_path):
    path = save_single_file(folders(kind), tmp_path / "model.safetensors")
    keys = _keys(path)
    missing = [key for key in COMMON_KEYS + TEXT_KEYS[kind] if key not in keys]
    assert not missing
    assert not [key for key in keys for prefix, names in DIFFUSERS_NAMES.items()
                if key.startswith(prefix) and any(name in key for name in names)]
    tensors = load_file(str(path))
    pipe = tiny_pipeline(kind)
    assert tensors["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    assert torch.equal(tensors[UNET_CONV_IN], pipe.unet.conv_in.weight)
    if kind != "sd1":
        prefix = "cond_stage_model.model." if kind == "sd2" else "conditioner.embedders.1.model."
        encoder = pipe.text_encoder if kind == "sd2" else pipe.text_encoder_2
        text_model = encoder.text_model if hasattr(encoder, "text_model") else encoder
        attention = text_model.encoder.layers[0].self_attn
        expected = torch.cat([attention.q_proj.weight, attention.k_proj.weight,
                              attention.v_proj.weight])
        in_proj = tensors[prefix + "transformer.resblocks.0.attn.in_proj_weight"]
        assert torch.equal(in_proj, expected)
    if kind == "sdxl":
        assert torch.equal(tensors["conditioner.embedders.1.model.text_projection"],
                           pipe.text_encoder_2.text_projection.weight.T)


def test_pipeline_object_variant_folder_float16_and_metadata(folders, tmp_path):
    from_folder = load_file(str(save_single_file(folders("sd1"), tmp_path / "a.safetensors")))
    # a folder holding only one weight variant (as `variant="fp16"` downloads are) is read as that
    tiny_pipeline("sd1").save_pretrained(tmp_path / "variant", variant="ema")
    from_variant = load_file(str(save_single_file(tmp_path / "variant", tmp_path / "v.safetensors")))
    assert from_variant.keys() == from_folder.keys()
    assert all(torch.equal(from_variant[k], from_folder[k]) for k in from_folder)
    path = save_single_file(tiny_pipeline("sd1"), tmp_path / "b.safetensors",
                            dtype=torch.float16, metadata={"title": "tiny"})
    half = load_file(str(path))
    assert half.keys() == from_folder.keys()
    assert all(t.dtype == torch.float16 for t in half.values())
    assert all(torch.equal(half[k], from_folder[k].half()) for k in half)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["title"] == "tiny"
        assert handle.metadata()["modelspec.prediction_type"] == "epsilon"


FULL_SIZE = {
    # stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0 UNet/VAE configs (structure only)
    "sd1": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=768, attention_head_dim=8),
    "sdxl": dict(block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
                 attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
}
FULL_SIZE_KEYS = {
    "sd1": ["output_blocks.11.0.skip_connection.weight", "input_blocks.11.0.out_layers.3.weight",
            "input_blocks.9.0.op.weight", "input_blocks.7.1.transformer_blocks.0.attn1.to_q.weight",
            "output_blocks.5.2.conv.weight", "output_blocks.8.2.conv.weight",
            "output_blocks.9.1.proj_out.weight",
            "middle_block.1.transformer_blocks.0.norm3.weight"],
    "sdxl": ["label_emb.0.0.weight", "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
             "input_blocks.8.1.transformer_blocks.9.ff.net.0.proj.weight",
             "input_blocks.6.0.op.weight",
             "output_blocks.2.2.conv.weight", "output_blocks.5.2.conv.weight",
             "output_blocks.8.0.skip_connection.weight",
             "middle_block.1.transformer_blocks.9.attn1.to_v.weight"],
}


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_full_size_layout_matches_diffusers_reader(kind):
    """At real SD1.5/SDXL sizes (meta tensors), diffusers' own converter inverts ours exactly."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    with torch.device("meta"):
        unet = UNet2DConditionModel(**FULL_SIZE[kind])
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4)
    original = convert_unet_to_original(unet.state_dict(), dict(unet.config))
    assert all(key in original for key in FULL_SIZE_KEYS[kind])
    prefixed = {"model.diffusion_model." + k: v for k, v in original.items()}
    back = convert_ldm_unet_checkpoint(prefixed, dict(unet.config))
    assert set(back) == set(unet.state_dict())
    assert all(back[k].shape == v.shape for k, v in unet.state_dict().items())
    original = convert_vae_to_original(vae.state_dict(), dict(vae.config))
    assert "decoder.up.0.block.2.conv1.weight" in original
    assert "encoder.down.1.block.0.nin_shortcut.weight" in original
    back = convert_ldm_vae_checkpoint({"first_stage_model." + k: v for k, v in original.items()},
                                      dict(vae.config))
    assert set(back) == set(vae.state_dict())
    assert all(back[k].shape == v.shape for k, v in vae.state_dict().items())


def _fake(path, text_key: str, *, channels: int = 4, metadata=None, extra=()):
    """A header-only stand-in checkpoint: a UNet input conv, one text-encoder key, extras."""
    tensors = {UNET_CONV_IN: torch.zeros(8, channels, 3, 3), text_key: torch.zeros(4, 2)}
    tensors.update({key: torch.zeros(0) for key in extra})
    save_file(tensors, str(path), metadata=metadata)
    return path


SD1_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_KEY = "cond_stage_model.model.token_embedding.weight"
SDXL_KEYS = ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
             "conditioner.embedders.1.model.token_embedding.weight")


def test_prediction_priority(tmp_path):
    sd2 = _fake(tmp_path / "sd2.safetensors", SD2_KEY)
    assert detect_single_file(sd2).prediction == "v_prediction"  # diffusers' SD2 default
    sd2_eps = _fake(tmp_path / "sd2e.safetensors", SD2_KEY,
                    metadata={"modelspec.prediction_type": "epsilon"})
    assert detect_single_file(sd2_eps).prediction == "epsilon"
    xl = _fake(tmp_path / "xl.safetensors", SDXL_KEYS[0], extra=[SDXL_KEYS[1]])
    assert detect_single_file(xl).arch == "sdxl"
    assert detect_single_file(xl).prediction == "epsilon"
    xl_v = _fake(tmp_path / "xlv.safetensors", SDXL_KEYS[0], extra=[SDXL_KEYS[1]],
                 metadata={"prediction_type": "v_prediction"})
    assert detect_single_file(xl_v).prediction == "v_prediction"
    # a v_pred key beats metadata; an explicit override beats both
    vpred = _fake(tmp_path / "vpred.safetensors", SD1_KEY, extra=["v_pred"],
                  metadata={"modelspec.prediction_type": "epsilon"})
    info = detect_single_file(vpred)
    assert info.prediction == "v_prediction" and "v_pred" in info.reason
    info = detect_single_file(vpred, prediction_type="eps")
    assert info.prediction == "epsilon" and "explicit" in info.reason
    inpaint = _fake(tmp_path / "inpaint.safetensors", SD1_KEY, channels=9)
    assert detect_single_file(inpaint).inpaint
    with pytest.raises(ConfigError) as error:
        detect_single_file(vpred, prediction_type="x0")
    assert error.value.field == "prediction_type"


def test_unknown_layouts_and_pickles_are_refused(tmp_path):
    no_unet = tmp_path / "vae.safetensors"
    save_file({"first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3)}, str(no_unet))
    with pytest.raises(ConfigError) as error:
        detect_single_file(no_unet)
    assert error.value.field == "path" and "model.diffusion_model" in error.value.message
    sd3 = _fake(tmp_path / "sd3.safetensors",
                "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight")
    with pytest.raises(ConfigError) as error:
        detect_single_file(sd3)
    assert error.value.field == "path" and "cond_stage_model.transformer" in error.value.message
    refiner = _fake(tmp_path / "refiner.safetensors",
                    "conditioner.embedders.0.model.text_projection")
    with pytest.raises(ConfigError, match="SDXL base"):
        detect_single_file(refiner)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04N.")
    with pytest.raises(ConfigError) as error:
        detect_single_file(pickle)
    assert error.value.field == "path" and "pickle" in error.value.message
    with pytest.raises(ConfigError) as error:
        save_single_file(no_unet, tmp_path / "out.safetensors")
    assert error.value.field == "path"


def test_folder_detection_and_missing_components(folders, tmp_path):
    assert detect_folder(folders("sd2")).arch == "sd2"
    info = detect_folder(folders("sdxl"), prediction_type="v")
    assert (info.arch, info.prediction, info.layout) == ("sdxl", "v_prediction", "diffusers")
    assert detect_folder(folders("sd1", True)).inpaint
    broken = shutil.copytree(folders("sd1"), tmp_path / "sd1")
    shutil.rmtree(broken / "vae")
    with pytest.raises(ConfigError) as error:
        detect_folder(broken)
    assert error.value.field == "vae"
    broken_xl = shutil.copytree(folders("sdxl"), tmp_path / "sdxl")
    shutil.rmtree(broken_xl / "tokenizer_2")
    with pytest.raises(ConfigError) as error:
        detect_folder(broken_xl)
    assert error.value.field == "tokenizer_2"


def test_config_of_another_family_is_refused(folders, tmp_path, offline):
    path = save_single_file(folders("sd1"), tmp_path / "sd1.safetensors")
    with pytest.raises(ConfigError) as error:
        load_single_file(path, config=folders("sdxl"))
    assert error.value.field == "config"
    pipe, info = load_single_file(path, config=folders("sd1"), prediction_type="v_prediction")
    assert info.prediction == "v_prediction"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
