"""Shipped Stable Diffusion configs: real architectures (parameter counts), folders, tokenizers."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from imagesynth.errors import ConfigError
from imagesynth.sd import configs
from imagesynth.sd.detect import normalise_prediction
from imagesynth.sd.configs import (STAMP, STANDARD, materialise, standard_config_folder,
                                   standard_config_name)

# Published parameter counts (sources in imagesynth/sd/configs.py's docstring).
SD15_UNET = 859_520_964
SD2_UNET = 865_910_724
SDXL_UNET = 2_567_463_684
SD_VAE = 83_653_863
CLIP_L_TEXT = 123_060_480
OPENCLIP_H_TEXT = 340_387_840
OPENCLIP_BIGG_TEXT = 694_659_840
# an inpainting UNet differs only in conv_in: 5 more input channels (mask + masked-image
# latents) into 320 channels through a 3x3 kernel
INPAINT_EXTRA = 5 * 320 * 3 * 3

EXPECTED = {
    "sd15": dict(unet=SD15_UNET, vae=SD_VAE, text_encoder=CLIP_L_TEXT),
    "sd15-inpaint": dict(unet=SD15_UNET + INPAINT_EXTRA, vae=SD_VAE, text_encoder=CLIP_L_TEXT),
    "sd21": dict(unet=SD2_UNET, vae=SD_VAE, text_encoder=OPENCLIP_H_TEXT),
    "sd21-base": dict(unet=SD2_UNET, vae=SD_VAE, text_encoder=OPENCLIP_H_TEXT),
    "sd2-inpaint": dict(unet=SD2_UNET + INPAINT_EXTRA, vae=SD_VAE, text_encoder=OPENCLIP_H_TEXT),
    "sdxl-base": dict(unet=SDXL_UNET, vae=SD_VAE, text_encoder=CLIP_L_TEXT,
                      text_encoder_2=OPENCLIP_BIGG_TEXT),
}
PROMPT = "a photograph of an astronaut riding a horse"
PROMPT_IDS = [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
PAD_IDS = {"<|endoftext|>": 49407, "!": 0}


def _read(name: str, path: str) -> dict:
    return json.loads((STANDARD[name].shipped / path).read_text())


def _meta_component(folder, component: str, library: str, class_name: str):
    """Instantiate a model component from the folder's config on the meta device (no memory)."""
    import diffusers
    import transformers

    cls = getattr(importlib.import_module(library), class_name)
    if issubclass(cls, diffusers.ModelMixin):
        with torch.device("meta"):
            return cls.from_config(cls.load_config(folder, subfolder=component))
    assert issubclass(cls, transformers.PreTrainedModel), (component, class_name)
    config = cls.config_class.from_pretrained(folder, subfolder=component, local_files_only=True)
    with torch.device("meta"):
        return cls(config)


@pytest.fixture(scope="module")
def folders():
    """Every shipped config materialised once (in the session's isolated IMAGESYNTH_HOME)."""
    return {name: materialise(name) for name in STANDARD}


@pytest.mark.parametrize("name", list(STANDARD))
def test_models_built_from_the_configs_have_the_published_parameter_counts(name, folders):
    index = json.loads((folders[name] / "model_index.json").read_text())
    counts = {}
    for component in EXPECTED[name]:
        model = _meta_component(folders[name], component, *index[component])
        assert all(p.device.type == "meta" for p in model.parameters())
        counts[component] = sum(p.numel() for p in model.parameters())
    assert counts == EXPECTED[name]


@pytest.mark.parametrize("name", list(STANDARD))
def test_config_values_match_the_model(name):
    spec = STANDARD[name]
    unet, vae = _read(name, "unet/config.json"), _read(name, "vae/config.json")
    text = _read(name, "text_encoder/config.json")
    assert unet["in_channels"] == (9 if spec.inpaint else 4) and unet["out_channels"] == 4
    # the native resolution is the UNet's latent side times the VAE's 2**(levels - 1) downscale
    assert unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1) == spec.resolution
    assert vae["latent_channels"] == 4
    if spec.arch == "sd1":
        assert (unet["attention_head_dim"], unet["cross_attention_dim"]) == (8, 768)
        assert not unet.get("use_linear_projection", False)
    if spec.arch == "sd2":
        assert unet["attention_head_dim"] == [5, 10, 20, 20] and unet["cross_attention_dim"] == 1024
        assert unet["use_linear_projection"] is True
        # only the 768 px v-model needs fp32 attention (it overflows in fp16 otherwise)
        assert unet.get("upcast_attention", False) is (name == "sd21")
        assert (text["hidden_act"], text["num_hidden_layers"], text["hidden_size"],
                text["num_attention_heads"], text["intermediate_size"],
                text["projection_dim"]) == ("gelu", 23, 1024, 16, 4096, 512)
    else:
        assert (text["hidden_act"], text["num_hidden_layers"], text["hidden_size"]) == \
            ("quick_gelu", 12, 768)
    if spec.arch == "sdxl":
        assert unet["block_out_channels"] == [320, 640, 1280]
        assert unet["transformer_layers_per_block"] == [1, 2, 10]
        assert unet["attention_head_dim"] == [5, 10, 20] and unet["use_linear_projection"] is True
        assert (unet["addition_embed_type"], unet["addition_time_embed_dim"],
                unet["projection_class_embeddings_input_dim"], unet["cross_attention_dim"]) == \
            ("text_time", 256, 2816, 2048)
        assert (vae["scaling_factor"], vae["force_upcast"]) == (0.13025, True)
        text_2 = _read(name, "text_encoder_2/config.json")
        assert text_2["architectures"] == ["CLIPTextModelWithProjection"]
        assert (text_2["hidden_act"], text_2["num_hidden_layers"], text_2["hidden_size"],
                text_2["num_attention_heads"], text_2["intermediate_size"],
                text_2["projection_dim"]) == ("gelu", 32, 1280, 20, 5120, 1280)
    else:
        assert unet["block_out_channels"] == [320, 640, 1280, 1280]
        # SD1/SD2 VAE configs leave scaling_factor to diffusers' LDM default
        assert "scaling_factor" not in vae
    scheduler = _read(name, "scheduler/scheduler_config.json")
    assert (scheduler["prediction_type"], scheduler["timestep_spacing"],
            scheduler["steps_offset"]) == (spec.prediction, "leading", 1)


@pytest.mark.parametrize("name", list(STANDARD))
def test_folder_assembles_the_pipeline_its_model_index_names(name, folders):
    """Each component model_index.json names loads from the folder as from_single_file loads it."""
    import diffusers

    spec, folder = STANDARD[name], folders[name]
    pipeline_cls = getattr(diffusers, spec.pipeline)
    index = pipeline_cls.load_config(folder)
    assert index["_class_name"] == spec.pipeline
    components = {}
    for component, value in index.items():
        if component.startswith("_") or not isinstance(value, list):
            continue
        library, class_name = value
        if library is None or component == "safety_checker":  # from_single_file skips it too
            components[component] = None
        elif component in EXPECTED[name]:
            components[component] = _meta_component(folder, component, library, class_name)
        else:
            cls = getattr(importlib.import_module(library), class_name)
            components[component] = cls.from_pretrained(folder, subfolder=component,
                                                        local_files_only=True)
    options = {k: index[k] for k in ("requires_safety_checker", "force_zeros_for_empty_prompt")
               if k in index}
    pipe = pipeline_cls(**components, **options)
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.in_channels == (9 if spec.inpaint else 4)
    assert pipe.scheduler.config.prediction_type == spec.prediction
    assert pipe.scheduler.config.timestep_spacing == "leading"
    assert pipe.vae.config.scaling_factor == (0.13025 if spec.arch == "sdxl" else 0.18215)
    assert pipe.text_encoder.config.hidden_act == ("gelu" if spec.arch == "sd2" else "quick_gelu")


@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl-base"])
def test_tokenizers_encode_the_known_clip_ids(name, folders):
    from transformers import CLIPTokenizer

    spec = STANDARD[name]
    assert [sub for sub, _ in spec.tokenizers] == \
        (["tokenizer", "tokenizer_2"] if spec.arch == "sdxl" else ["tokenizer"])
    for subfolder, pad_token in spec.tokenizers:
        tokenizer = CLIPTokenizer.from_pretrained(folders[name], subfolder=subfolder,
                                                  local_files_only=True)
        assert tokenizer(PROMPT).input_ids == PROMPT_IDS
        assert tokenizer.pad_token == pad_token
        padded = tokenizer(PROMPT, padding="max_length", max_length=tokenizer.model_max_length)
        assert len(padded.input_ids) == 77
        assert padded.input_ids[len(PROMPT_IDS):] == [PAD_IDS[pad_token]] * (77 - len(PROMPT_IDS))
    # CLIP-L (SD1, SDXL's first) pads with <|endoftext|>; OpenCLIP (SD2, SDXL's second) with "!"
    expected_pads = {"sd1": ["<|endoftext|>"], "sd2": ["!"], "sdxl": ["<|endoftext|>", "!"]}
    assert [pad for _, pad in spec.tokenizers] == expected_pads[spec.arch]


def test_detection_reads_each_folder_back_as_its_model(folders):
    from imagesynth.sd.detect import detect_folder

    for name, spec in STANDARD.items():
        info = detect_folder(folders[name])
        assert (info.arch, info.prediction, info.inpaint) == \
            (spec.arch, spec.prediction, spec.inpaint)


@pytest.mark.parametrize("arch, prediction, inpaint, name", [
    ("sd1", "epsilon", False, "sd15"),
    ("sd1", "eps", True, "sd15-inpaint"),
    ("sd2", "v", False, "sd21"),
    ("sd2", "v_prediction", False, "sd21"),
    ("sd2", "epsilon", False, "sd21-base"),
    ("sd2", "epsilon", True, "sd2-inpaint"),
    ("sdxl", "epsilon", False, "sdxl-base"),
])
def test_standard_config_name_picks_the_matching_model(arch, prediction, inpaint, name):
    assert standard_config_name(arch, prediction, inpaint) == name
    spec = STANDARD[name]
    assert (spec.arch, spec.prediction, spec.inpaint) == \
        (arch, normalise_prediction(prediction), inpaint)


@pytest.mark.parametrize("arch, prediction, inpaint, name", [
    ("sd1", "v", False, "sd15"),
    ("sd2", "v", True, "sd2-inpaint"),
    ("sdxl", "v_prediction", False, "sdxl-base"),
])
def test_fine_tunes_with_the_other_prediction_type_use_the_same_networks(arch, prediction,
                                                                        inpaint, name):
    assert standard_config_name(arch, prediction, inpaint) == name


@pytest.mark.parametrize("arch, prediction, inpaint, field", [
    ("sd2", "x0", False, "prediction_type"),
    ("sdxl", "epsilon", True, "arch"),
    ("sd3", "epsilon", False, "arch"),
])
def test_unsupported_combinations_name_the_field(arch, prediction, inpaint, field):
    with pytest.raises(ConfigError) as caught:
        standard_config_name(arch, prediction, inpaint)
    assert caught.value.field == field and caught.value.fix


def test_folder_is_built_once_and_rebuilt_when_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path))
    folder = standard_config_folder("sd1", "epsilon")
    assert folder == tmp_path / "cache" / "sd-configs" / "sd15"
    stamp = (folder / STAMP).read_text()
    marker = folder / "tokenizer" / "vocab.json"
    built_at = marker.stat().st_mtime_ns
    assert standard_config_folder("sd1", "eps") == folder
    assert marker.stat().st_mtime_ns == built_at  # reused, not rewritten
    # a folder left by an older version (different stamp, a stray file) is replaced whole
    (folder / STAMP).write_text("older")
    (folder / "stray.json").write_text("{}")
    assert standard_config_folder("sd1", "epsilon") == folder
    assert (folder / STAMP).read_text() == stamp and not (folder / "stray.json").exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["sd15"]  # no temp folders left


def test_racing_builders_all_return_the_same_complete_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path))
    # every builder finishes its own temp folder before any installs it, so all but one rename
    # meet an installed folder: the race the rename-into-place design must survive
    barrier_size = 4
    real_install, arrived = configs._install, []
    barrier = threading.Barrier(barrier_size)

    def install_after_all_built(building, target, stamp):
        arrived.append(building)
        barrier.wait(timeout=60)
        real_install(building, target, stamp)

    monkeypatch.setattr(configs, "_install", install_after_all_built)
    with ThreadPoolExecutor(barrier_size) as pool:
        results = list(pool.map(lambda _: materialise("sd21-base"), range(barrier_size)))
    assert len(set(arrived)) == barrier_size
    folder = tmp_path / "cache" / "sd-configs" / "sd21-base"
    assert results == [folder] * barrier_size
    assert (folder / STAMP).read_text() == configs._fingerprint(STANDARD["sd21-base"])
    assert sorted(p.name for p in folder.parent.iterdir()) == ["sd21-base"]
    special = json.loads((folder / "tokenizer" / "special_tokens_map.json").read_text())
    assert special["pad_token"] == "!"


def test_missing_shipped_files_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path / "home"))
    shipped = tmp_path / "configs"
    shutil.copytree(configs.SHIPPED_DIR / "sd15", shipped / "sd15")
    os.remove(shipped / "sd15" / "model_index.json")
    monkeypatch.setattr(configs, "SHIPPED_DIR", shipped)
    with pytest.raises(ConfigError) as caught:
        materialise("sd15")
    assert caught.value.field == "config"
    with pytest.raises(ConfigError) as unknown:
        materialise("sd9")
    assert unknown.value.field == "config"
