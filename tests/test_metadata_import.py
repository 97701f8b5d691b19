"""Settings import: real PNG/JPEG/WEBP files in each tool's exact metadata format."""

from __future__ import annotations

import copy
import json

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from imagesynth.errors import InputImageError
from imagesynth.io.metadata_import import SETTING_KEYS, SOURCES, read_generation_settings
from imagesynth.io.pngmeta import MAX_RECIPE_BYTES, a1111_parameters, save_png
from imagesynth.io.sampler_names import (A1111_TO_IMAGESYNTH, COMFYUI_TO_IMAGESYNTH,
                                         IMAGESYNTH_SAMPLERS, IMAGESYNTH_TO_A1111,
                                         INVOKEAI_TO_IMAGESYNTH, to_imagesynth)


def png(tmp_path, chunks: dict[str, str], name: str = "in.png"):
    """An 8x8 PNG carrying `chunks` as tEXt chunks, the way each tool writes them."""
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    path = tmp_path / name
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path, pnginfo=info)
    return path


def check_shape(result):
    """Invariants every result keeps: known source, only normalised keys, strict JSON."""
    assert result.source in SOURCES
    assert set(result.settings) <= set(SETTING_KEYS)
    json.dumps(result.to_dict(), allow_nan=False)
    return result


# --- A1111 ----------------------------------------------------------------------------------

A1111_TEXT = (
    "masterpiece, a castle on a hill,\n"
    "at dusk, (volumetric light:1.2)\n"
    "Negative prompt: blurry, lowres\n"
    "worst quality\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3937434467, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, "
    'Lora hashes: "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef", Version: v1.7.0')


def test_a1111_infotext_is_normalised(tmp_path):
    result = check_shape(read_generation_settings(png(tmp_path, {"parameters": A1111_TEXT})))
    assert result.source == "a1111"
    assert result.settings == {
        "prompt": "masterpiece, a castle on a hill,\nat dusk, (volumetric light:1.2)",
        "negative_prompt": "blurry, lowres\nworst quality",
        "steps": 28, "sampler": "dpmpp_2m", "guidance_scale": 6.5, "seed": 3937434467,
        "width": 512, "height": 768, "model": "v1-5-pruned-emaonly"}
    assert result.unknown == {
        "Model hash": "6ce0161689", "Clip skip": "2", "Version": "v1.7.0",
        "Lora hashes": "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef"}


def test_unknown_fields_and_unmapped_sampler_are_kept(tmp_path):
    text = ("a fox\nSteps: 20, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 7, "
            "Seed: 12, Size: 640x512, ENSD: 31337, Hires upscale: 2, Hires steps: 10, "
            "Hires upscaler: Latent, Denoising strength: 0.7, Size-1: weird")
    result = check_shape(read_generation_settings(png(tmp_path, {"parameters": text})))
    assert "sampler" not in result.settings
    assert result.unknown["sampler"] == "DPM++ SDE"
    assert result.unknown["Schedule type"] == "Karras" and result.unknown["ENSD"] == "31337"
    # with hires fix, A1111's denoising strength belongs to the upscale pass, not to img2img
    assert "strength" not in result.settings and result.unknown["Denoising strength"] == "0.7"
    assert result.unknown["Hires upscaler"] == "Latent"
    assert (result.settings["width"], result.settings["height"]) == (640, 512)


def test_a1111_img2img_strength_and_bad_values(tmp_path):
    text = "cat\nSteps: many, Sampler: Euler a, CFG scale: 7, Seed: 5, Denoising strength: 0.45"
    result = check_shape(read_generation_settings(png(tmp_path, {"parameters": text})))
    assert result.settings["strength"] == 0.45 and result.settings["sampler"] == "euler_ancestral"
    assert "steps" not in result.settings and result.unknown["steps"] == "many"


def test_a1111_text_without_a_parameter_line_is_all_prompt(tmp_path):
    # A1111's rule: the last line is parameters only when it holds 3+ `key: value` pairs
    text = "a dog\nstyle: watercolour, mood: calm"
    result = check_shape(read_generation_settings(png(tmp_path, {"parameters": text})))
    assert result.settings == {"prompt": text} and result.unknown == {}


def test_a1111_jpeg_exif_user_comment_is_read(tmp_path):
    exif = Image.Exif()  # what piexif.helper.UserComment.dump(text, "unicode") writes for A1111
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + A1111_TEXT.encode("utf-16-be")
    path = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(path, "JPEG", exif=exif)
    result = check_shape(read_generation_settings(path))
    assert result.source == "a1111" and result.settings["seed"] == 3937434467
    assert result.settings["negative_prompt"] == "blurry, lowres\nworst quality"


# --- Fooocus --------------------------------------------------------------------------------

FOOOCUS_JSON = {
    "adm_guidance": "(1.5, 0.8, 0.3)", "base_model": "juggernautXL_v8Rundiffusion.safetensors",
    "base_model_hash": "aeb7e9e689", "full_negative_prompt": ["lowres"],
    "full_prompt": ["a lighthouse, cinematic"], "guidance_scale": 4, "loras": [],
    "negative_prompt": "", "performance": "Speed", "prompt": "a lighthouse",
    "refiner_model": "None", "refiner_switch": 0.5, "resolution": "(1152, 896)",
    "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras", "seed": "1234", "sharpness": 2,
    "steps": 30, "styles": "['Fooocus V2', 'Fooocus Sharp']", "vae": "Default (model)",
    "version": "Fooocus v2.5.5"}


def test_fooocus_json_scheme(tmp_path):
    path = png(tmp_path, {"parameters": json.dumps(FOOOCUS_JSON), "fooocus_scheme": "fooocus"})
    result = check_shape(read_generation_settings(path))
    assert result.source == "fooocus"
    assert result.settings == {"prompt": "a lighthouse", "seed": 1234, "steps": 30,
                               "guidance_scale": 4.0, "width": 1152, "height": 896,
                               "model": "juggernautXL_v8Rundiffusion.safetensors"}
    assert result.unknown["sampler"] == "dpmpp_2m_sde_gpu" and result.unknown["sharpness"] == 2


def test_fooocus_webp_exif_a1111_scheme(tmp_path):
    exif = Image.Exif()  # Fooocus's get_exif(): plain text in IFD0, scheme in MakerNote
    exif[0x9286] = "a bird\nSteps: 30, Sampler: DPM++ 2M Karras, Seed: 9, Scheduler: karras"
    exif[0x927C] = "a1111"
    path = tmp_path / "f.webp"
    Image.new("RGB", (8, 8)).save(path, "WEBP", exif=exif)
    result = check_shape(read_generation_settings(path))
    assert result.source == "fooocus"
    assert result.settings == {"prompt": "a bird", "steps": 30, "sampler": "dpmpp_2m", "seed": 9}
    assert result.unknown == {"Scheduler": "karras"}


def test_a1111_prompt_starting_with_a_brace_is_not_json(tmp_path):
    text = "{red|blue} car\nSteps: 10, Sampler: Heun, Seed: 1"
    result = check_shape(read_generation_settings(png(tmp_path, {"parameters": text})))
    assert result.source == "a1111" and result.settings["prompt"] == "{red|blue} car"
    assert result.unknown == {}


# --- ComfyUI --------------------------------------------------------------------------------

# ComfyUI's default text-to-image graph in API format (script_examples/basic_api_example.py)
COMFY_API = {
    "3": {"class_type": "KSampler",
          "inputs": {"cfg": 8, "denoise": 1, "latent_image": ["5", 0], "model": ["4", 0],
                     "negative": ["7", 0], "positive": ["6", 0], "sampler_name": "euler",
                     "scheduler": "normal", "seed": 8566257, "steps": 20}},
    "4": {"class_type": "CheckpointLoaderSimple",
          "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 512,
                                                       "width": 512}},
    "6": {"class_type": "CLIPTextEncode",
          "inputs": {"clip": ["4", 1], "text": "masterpiece best quality girl"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "bad hands"}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI",
                                                "images": ["8", 0]}},
}

# The front end's default workflow in UI format (ComfyUI_frontend src/scripts/defaultGraph.ts)
COMFY_WORKFLOW = {
    "last_node_id": 9, "last_link_id": 9,
    "nodes": [
        {"id": 7, "type": "CLIPTextEncode", "pos": [413, 389], "size": [425.28, 180.61],
         "flags": {}, "order": 3, "mode": 0,
         "inputs": [{"name": "clip", "type": "CLIP", "link": 5}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [6],
                      "slot_index": 0}],
         "properties": {}, "widgets_values": ["text, watermark"]},
        {"id": 6, "type": "CLIPTextEncode", "pos": [415, 186], "size": [422.85, 164.31],
         "flags": {}, "order": 2, "mode": 0,
         "inputs": [{"name": "clip", "type": "CLIP", "link": 3}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [4],
                      "slot_index": 0}],
         "properties": {},
         "widgets_values": ["beautiful scenery nature glass bottle landscape, , purple galaxy "
                            "bottle,"]},
        {"id": 5, "type": "EmptyLatentImage", "pos": [473, 609], "size": [315, 106],
         "flags": {}, "order": 1, "mode": 0,
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [2], "slot_index": 0}],
         "properties": {}, "widgets_values": [512, 512, 1]},
        {"id": 3, "type": "KSampler", "pos": [863, 186], "size": [315, 262], "flags": {},
         "order": 4, "mode": 0,
         "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                    {"name": "positive", "type": "CONDITIONING", "link": 4},
                    {"name": "negative", "type": "CONDITIONING", "link": 6},
                    {"name": "latent_image", "type": "LATENT", "link": 2}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [7], "slot_index": 0}],
         "properties": {}, "widgets_values": [156680208700286, True, 20, 8, "euler", "normal", 1]},
        {"id": 8, "type": "VAEDecode", "pos": [1209, 188], "size": [210, 46], "flags": {},
         "order": 5, "mode": 0,
         "inputs": [{"name": "samples", "type": "LATENT", "link": 7},
                    {"name": "vae", "type": "VAE", "link": 8}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [9], "slot_index": 0}],
         "properties": {}},
        {"id": 9, "type": "SaveImage", "pos": [1451, 189], "size": [210, 26], "flags": {},
         "order": 6, "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 9}],
         "properties": {}},
        {"id": 4, "type": "CheckpointLoaderSimple", "pos": [26, 474], "size": [315, 98],
         "flags": {}, "order": 0, "mode": 0,
         "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1], "slot_index": 0},
                     {"name": "CLIP", "type": "CLIP", "links": [3, 5], "slot_index": 1},
                     {"name": "VAE", "type": "VAE", "links": [8], "slot_index": 2}],
         "properties": {}, "widgets_values": ["v1-5-pruned-emaonly.ckpt"]},
    ],
    "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
              [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"],
              [6, 7, 0, 3, 2, "CONDITIONING"], [7, 3, 0, 8, 0, "LATENT"],
              [8, 4, 2, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"]],
    "groups": [], "config": {}, "extra": {}, "version": 0.4,
}


def test_comfyui_api_prompt_wins_over_its_workflow(tmp_path):
    # SaveImage writes both chunks; the API graph is what actually ran
    path = png(tmp_path, {"prompt": json.dumps(COMFY_API), "workflow": json.dumps(COMFY_WORKFLOW)})
    result = check_shape(read_generation_settings(path))
    assert result.source == "comfyui"
    assert result.settings == {
        "seed": 8566257, "steps": 20, "guidance_scale": 8.0, "sampler": "euler",
        "prompt": "masterpiece best quality girl", "negative_prompt": "bad hands",
        "width": 512, "height": 512, "model": "v1-5-pruned-emaonly.safetensors"}
    assert result.unknown == {"scheduler": "normal", "batch_size": 1,
                              "comfyui_other_nodes": ["SaveImage", "VAEDecode"]}


@pytest.mark.parametrize("control", [True, "randomize", None])
def test_comfyui_workflow_only(tmp_path, control):
    workflow = copy.deepcopy(COMFY_WORKFLOW)
    if control != True:  # noqa: E712 - the default graph's own value is literally `true`
        sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
        values = sampler["widgets_values"]
        sampler["widgets_values"] = values[:1] + ([control] if control else []) + values[2:]
    path = png(tmp_path, {"workflow": json.dumps(workflow)})
    result = check_shape(read_generation_settings(path))
    assert result.source == "comfyui"
    assert result.settings == {
        "seed": 156680208700286, "steps": 20, "guidance_scale": 8.0, "sampler": "euler",
        "prompt": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,",
        "negative_prompt": "text, watermark", "width": 512, "height": 512,
        "model": "v1-5-pruned-emaonly.ckpt"}
    assert result.unknown["scheduler"] == "normal"


def test_comfyui_workflow_text_from_a_primitive_and_object_links(tmp_path):
    workflow = copy.deepcopy(COMFY_WORKFLOW)
    positive = next(n for n in workflow["nodes"] if n["id"] == 6)
    positive["inputs"].append({"name": "text", "type": "STRING", "link": 10,
                               "widget": {"name": "text"}})
    workflow["nodes"].append({"id": 10, "type": "PrimitiveNode", "mode": 0,
                              "outputs": [{"name": "STRING", "links": [10]}],
                              "widgets_values": ["a prompt from a primitive"]})
    workflow["links"].append([10, 10, 0, 6, 1, "STRING"])
    # the 1.0 workflow schema stores links as objects
    workflow["links"] = [{"id": l[0], "origin_id": l[1], "origin_slot": l[2], "target_id": l[3],
                          "target_slot": l[4], "type": l[5]} for l in workflow["links"]]
    path = png(tmp_path, {"workflow": json.dumps(workflow)})
    result = check_shape(read_generation_settings(path))
    assert result.settings["prompt"] == "a prompt from a primitive"
    assert result.settings["model"] == "v1-5-pruned-emaonly.ckpt"
    assert result.unknown["comfyui_other_nodes"] == ["SaveImage", "VAEDecode"]


def test_comfyui_first_ksampler_by_node_id_and_img2img(tmp_path):
    graph = copy.deepcopy(COMFY_API)
    graph["10"] = copy.deepcopy(graph["3"])  # "10" sorts before "3" as text, not as a number
    graph["10"]["inputs"].update(seed=1, sampler_name="dpmpp_sde")
    graph["3"]["inputs"].update(denoise=0.6, latent_image=["11", 0], seed=["12", 0])
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["13", 0], "vae": ["4", 2]}}
    graph["12"] = {"class_type": "PrimitiveInt", "inputs": {"value": 777}}
    graph["13"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    result = check_shape(read_generation_settings(png(tmp_path, {"prompt": json.dumps(graph)})))
    assert result.settings["seed"] == 777 and result.settings["strength"] == 0.6
    assert result.settings["sampler"] == "euler" and "width" not in result.settings
    assert result.unknown["comfyui_ksamplers"] == 2
    assert result.unknown["comfyui_latent_source"] == "VAEEncode"
    others = result.unknown["comfyui_other_nodes"]  # the resolved primitive counts as read
    assert "LoadImage" in others and "PrimitiveInt" not in others


def test_comfyui_muted_ksampler_is_skipped(tmp_path):
    workflow = copy.deepcopy(COMFY_WORKFLOW)
    muted = copy.deepcopy(next(n for n in workflow["nodes"] if n["type"] == "KSampler"))
    muted.update(id=1, mode=2, inputs=[], widgets_values=[5, "fixed", 99, 1, "heun", "karras", 1])
    workflow["nodes"].append(muted)
    result = read_generation_settings(png(tmp_path, {"workflow": json.dumps(workflow)}))
    assert result.settings["steps"] == 20 and "comfyui_ksamplers" not in result.unknown


def test_comfyui_ksampler_advanced(tmp_path):
    graph = copy.deepcopy(COMFY_API)
    graph["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "add_noise": "enable", "noise_seed": 42, "steps": 30, "cfg": 5.5, "sampler_name": "heun",
        "scheduler": "karras", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0], "model": ["4", 0], "start_at_step": 0, "end_at_step": 10000,
        "return_with_leftover_noise": "disable"}}
    result = check_shape(read_generation_settings(png(tmp_path, {"prompt": json.dumps(graph)})))
    assert result.settings["seed"] == 42 and result.settings["sampler"] == "heun"
    assert result.settings["guidance_scale"] == 5.5
    assert result.unknown["add_noise"] == "enable" and result.unknown["end_at_step"] == 10000


@pytest.mark.parametrize("chunk", [
    "{not json", "[1, 2]", '{"3": {"class_type": "KSampler", "inputs": NaN}}',
    "[" * 100_000,
    json.dumps({"3": {"class_type": "KSampler", "inputs": {
        "positive": ["99", 0], "negative": [["x"], 0], "latent_image": [True, 0],
        "model": ["3", 0], "steps": {"x": 1}, "seed": True, "sampler_name": ["3", 0],
        "cfg": [1, 2, 3]}}, "4": "junk", "5": {"class_type": ["list"], "inputs": []}}),
])
def test_malformed_comfyui_chunks_do_not_raise(tmp_path, chunk):
    workflow = json.dumps({"nodes": [None, 3, {"id": [1]}, {"id": 2, "inputs": [5, {"link": [1]}],
                                                           "widgets_values": "x"}],
                           "links": [None, [1, 2], {"id": {}}]})
    path = png(tmp_path, {"prompt": chunk, "workflow": workflow})
    result = check_shape(read_generation_settings(path))
    assert result.source in ("none", "comfyui")
    assert not {"prompt", "steps", "seed", "guidance_scale"} & set(result.settings)


def test_malformed_prompt_chunk_is_reported_and_lower_formats_still_read(tmp_path):
    path = png(tmp_path, {"prompt": '{"3": {"class_type": ', "parameters": A1111_TEXT})
    result = check_shape(read_generation_settings(path))
    assert result.source == "a1111" and result.settings["steps"] == 28
    assert result.unknown["prompt chunk"].startswith("not valid JSON")


def test_oversized_json_chunk_is_not_parsed(tmp_path):
    big = json.dumps({"prompt": "x" * (MAX_RECIPE_BYTES + 10)})
    result = check_shape(read_generation_settings(png(tmp_path, {"imagesynth": big})))
    assert result.source == "none" and result.settings == {}
    assert "not read" in result.unknown["imagesynth chunk"]


# --- InvokeAI -------------------------------------------------------------------------------

INVOKE_V4 = {  # CoreMetadataInvocation.model_dump(exclude_none=True) + app_version
    "generation_mode": "txt2img", "positive_prompt": "a cat in a hat", "negative_prompt": "blurry",
    "width": 768, "height": 512, "seed": 1234567890, "rand_device": "cpu", "cfg_scale": 7.5,
    "cfg_rescale_multiplier": 0, "steps": 30, "scheduler": "dpmpp_2m_k", "clip_skip": 0,
    "model": {"key": "d0c5e8f0-aaaa", "hash": "blake3:95f2a3", "name": "stable-diffusion-v1-5",
              "base": "sd-1", "type": "main"},
    "loras": [], "app_version": "4.2.9"}


def test_invokeai_metadata(tmp_path):
    path = png(tmp_path, {"invokeai_metadata": json.dumps(INVOKE_V4),
                          "invokeai_graph": json.dumps({"id": "g", "nodes": {}, "edges": []})})
    result = check_shape(read_generation_settings(path))
    assert result.source == "invokeai"
    assert result.settings == {"prompt": "a cat in a hat", "negative_prompt": "blurry",
                               "width": 768, "height": 512, "seed": 1234567890,
                               "guidance_scale": 7.5, "steps": 30, "sampler": "dpmpp_2m",
                               "model": "stable-diffusion-v1-5"}
    assert result.unknown["model.hash"] == "blake3:95f2a3" and result.unknown["clip_skip"] == 0
    assert result.unknown["app_version"] == "4.2.9" and "invokeai_graph chunk" not in result.unknown


def test_json_nan_is_kept_as_text_not_float(tmp_path):
    meta = json.dumps({**INVOKE_V4, "cfg_scale": float("nan")})  # Python writes a bare NaN
    result = check_shape(read_generation_settings(png(tmp_path, {"invokeai_metadata": meta})))
    assert result.unknown["guidance_scale"] == "NaN" and result.settings["steps"] == 30


def test_invokeai_v3_img2img_with_unmapped_scheduler(tmp_path):
    meta = {"generation_mode": "img2img", "positive_prompt": "sea", "seed": 3, "steps": 20,
            "cfg_scale": 7, "scheduler": "lms", "strength": 0.75,
            "model": {"model_name": "sd-1.5", "base_model": "sd-1", "model_type": "main"}}
    result = check_shape(read_generation_settings(png(tmp_path,
                                                      {"invokeai_metadata": json.dumps(meta)})))
    assert result.settings["strength"] == 0.75 and result.settings["model"] == "sd-1.5"
    assert result.unknown["sampler"] == "lms" and result.unknown["model.base_model"] == "sd-1"


# --- imagesynth and precedence --------------------------------------------------------------

RECIPE = {"prompt": "a red circle, on the left", "negative_prompt": "blurry", "steps": 20,
          "sampler": "heun", "guidance_scale": 3.5, "seed": 7, "size": [32, 48],
          "model_hash": "ab12cd34", "model": "shapes", "versions": {"imagesynth": "0.1.0"},
          "sampler_options": {"rho": 7.0}, "strength": None}


def test_imagesynth_png_from_save_png(tmp_path):
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "mine.png", RECIPE)
    result = check_shape(read_generation_settings(path.read_bytes()))  # bytes work too
    assert result.source == "imagesynth"
    assert result.settings == {"prompt": "a red circle, on the left", "negative_prompt": "blurry",
                               "steps": 20, "sampler": "heun", "guidance_scale": 3.5, "seed": 7,
                               "width": 32, "height": 48, "model": "shapes"}
    assert result.unknown == {"schema": 1, "model_hash": "ab12cd34",
                              "versions": {"imagesynth": "0.1.0"},
                              "sampler_options": {"rho": 7.0}}


def test_dream_recipe_keeps_its_config(tmp_path):
    recipe = {"kind": "dream", "prompt": "a star", "seed": 3, "steps": 300, "size": [64, 64],
              "sampler": "dream-pixels", "model": "shapes-clip",
              "dream": {"prompt": "a star", "drawer": "pixels", "steps": 300, "width": 64,
                        "height": 64, "seed": 3, "scorer": "shapes-clip", "cutouts": 32}}
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "dream.png", recipe)
    result = check_shape(read_generation_settings(path))
    assert result.settings == {"prompt": "a star", "seed": 3, "steps": 300, "width": 64,
                               "height": 64, "model": "shapes-clip"}
    assert result.unknown["sampler"] == "dream-pixels" and result.unknown["kind"] == "dream"
    assert result.unknown["dream"] == {"drawer": "pixels", "cutouts": 32}


def test_broken_imagesynth_chunk_falls_back_to_its_a1111_copy(tmp_path):
    chunks = {"imagesynth": '{"prompt": "a red', "parameters": a1111_parameters(RECIPE)}
    path = png(tmp_path, chunks)
    result = check_shape(read_generation_settings(path))
    assert result.source == "imagesynth" and result.settings["sampler"] == "heun"
    assert result.settings["prompt"] == "a red circle, on the left"
    assert result.unknown["imagesynth chunk"].startswith("not valid JSON")
    assert "ignored_chunks" not in result.unknown


def test_precedence_imagesynth_then_invokeai_then_comfyui_then_a1111(tmp_path):
    chunks = {"parameters": A1111_TEXT, "prompt": json.dumps(COMFY_API),
              "invokeai_metadata": json.dumps(INVOKE_V4),
              "imagesynth": json.dumps({"prompt": "ours", "seed": 1})}
    assert read_generation_settings(png(tmp_path, chunks)).settings["prompt"] == "ours"
    del chunks["imagesynth"]
    result = read_generation_settings(png(tmp_path, chunks))
    assert result.source == "invokeai"
    assert result.unknown["ignored_chunks"] == ["parameters", "prompt"]
    del chunks["invokeai_metadata"]
    assert read_generation_settings(png(tmp_path, chunks)).source == "comfyui"


# --- no metadata, not an image --------------------------------------------------------------

def test_plain_png_has_no_settings(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    result = check_shape(read_generation_settings(path))
    assert (result.source, result.settings, result.unknown) == ("none", {}, {})


def test_foreign_text_chunks_are_shown(tmp_path):
    result = read_generation_settings(png(tmp_path, {"Software": "GIMP", "sd-metadata": "{}"}))
    assert result.source == "none" and result.unknown["Software chunk"] == "GIMP"
    assert "not read" in result.unknown["sd-metadata chunk"]


def test_text_file_named_png_raises_input_image_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("Steps: 20, Sampler: Euler, Seed: 1\n")
    with pytest.raises(InputImageError) as info:
        read_generation_settings(path)
    assert info.value.field == "image" and info.value.fix
    with pytest.raises(InputImageError):
        read_generation_settings(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # truncated header


# --- sampler names --------------------------------------------------------------------------

def test_sampler_names_match_the_engine():
    from imagesynth.diffusion.samplers import SAMPLERS

    assert IMAGESYNTH_SAMPLERS == tuple(SAMPLERS)
    assert set(IMAGESYNTH_TO_A1111) == set(SAMPLERS)
    for mapping in (A1111_TO_IMAGESYNTH, COMFYUI_TO_IMAGESYNTH, INVOKEAI_TO_IMAGESYNTH):
        assert set(mapping.values()) <= set(SAMPLERS)


@pytest.mark.parametrize("name, ours", [
    ("Euler", "euler"), ("Euler a", "euler_ancestral"), ("Heun", "heun"),
    ("DPM++ 2M", "dpmpp_2m"), ("DPM++ 2M Karras", "dpmpp_2m"), ("DDPM", "ddpm"),
    ("dpm++ 2m  karras", "dpmpp_2m"), ("k_euler_a", "euler_ancestral"),
    ("euler_ancestral", "euler_ancestral"), ("ddpm", "ddpm"), ("dpmpp_2m", "dpmpp_2m"),
    ("euler_a", "euler_ancestral"), ("dpmpp_2m_k", "dpmpp_2m"), ("heun_k", "heun"),
    ("EULER_K", "euler"), ("DPM++ SDE", None), ("DPM++ 2M SDE", None), ("dpmpp_2m_sde", None),
    ("euler_cfg_pp", None), ("LMS", None), ("", None), (None, None), (3, None),
])
def test_to_imagesynth(name, ours):
    assert to_imagesynth(name) == ours


def test_a1111_names_round_trip():
    for ours, label in IMAGESYNTH_TO_A1111.items():
        assert A1111_TO_IMAGESYNTH[label] == ours and to_imagesynth(label) == ours
    assert IMAGESYNTH_TO_A1111["euler_ancestral"] == "Euler a"
    assert IMAGESYNTH_TO_A1111["dpmpp_2m"] == "DPM++ 2M"
