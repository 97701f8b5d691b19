"""Foreign CLIPs: tiny random HF and open_clip models on disk, checked against the originals."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from imagesynth.clip.foreign import (HFCLIPScorer, OpenCLIPScorer, load_scorer,
                                     resize_center_crop, scorer_identity)
from imagesynth.errors import ConfigError, MissingFileError, ModelNotFoundError
from imagesynth.io.checkpoint import save_weights

TEXTS = ["a red apple", "a small blue car on a road"]


def _picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth-ish random RGB picture (resampling differences stay small on it)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BILINEAR)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A random tiny transformers CLIPModel with a character-level CLIP tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = tmp_path_factory.mktemp("hf-clip")
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, bos_token_id=len(vocab) - 2,
                         eos_token_id=len(vocab) - 1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    return folder, model, tokenizer, CLIPImageProcessor.from_pretrained(folder)


def _features(output):
    return output if torch.is_tensor(output) else output.pooler_output


def test_hf_folder_embeddings_match_the_reference_model(hf_folder):
    folder, model, tokenizer, processor = hf_folder
    scorer = load_scorer(f"hf:{folder}")
    assert isinstance(scorer, HFCLIPScorer)
    tokens = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected_text = _features(model.get_text_features(**tokens))
    assert torch.allclose(scorer.embed_text(TEXTS),
                          torch.nn.functional.normalize(expected_text, dim=-1), atol=1e-5)
    # at the input size preprocessing is only rescale + normalise: results must agree exactly
    picture = _picture(32, 32)
    pixels = processor(images=picture, return_tensors="pt")["pixel_values"]
    assert torch.allclose(scorer.preprocess(_to_tensor(picture)), pixels, atol=1e-5)
    with torch.no_grad():
        expected_image = _features(model.get_image_features(pixel_values=pixels))
    assert torch.allclose(scorer.embed_image(_to_tensor(picture)),
                          torch.nn.functional.normalize(expected_image, dim=-1), atol=1e-5)
    assert scorer.logit_scale() == pytest.approx(float(model.logit_scale.detach().exp()))


def test_hf_resize_and_crop_follow_the_pil_processor(hf_folder):
    folder, model, _, processor = hf_folder
    scorer = HFCLIPScorer(folder)
    for width, height in ((57, 40), (40, 75), (96, 96)):
        picture = _picture(width, height, seed=width)
        reference = processor(images=picture, return_tensors="pt")["pixel_values"]
        ours = scorer.preprocess(_to_tensor(picture))
        assert ours.shape == reference.shape == (1, 3, 32, 32)
        # PIL resizes 8-bit pixels; torch resizes floats: differences of ~1/255 per pixel,
        # about 0.015 after dividing by CLIP's std (~0.27)
        assert (ours - reference).abs().mean() < 0.01
        with torch.no_grad():
            expected = _features(model.get_image_features(pixel_values=reference))
        assert _cosine(scorer.embed_image(_to_tensor(picture)), expected).item() > 0.999


def test_hf_image_embedding_is_differentiable(hf_folder):
    scorer = HFCLIPScorer(hf_folder[0])
    images = torch.rand(2, 3, 48, 40, requires_grad=True)
    loss = -(scorer.embed_image(images) @ scorer.embed_text(["a red apple"]).T).sum()
    loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def open_clip_files(tmp_path_factory):
    """A random tiny open_clip model: config JSON + weights as safetensors and as .pt."""
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("open-clip")
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                             "head_width": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32,
                           "heads": 2, "layers": 2}}
    config_path = folder / "tiny-test-clip.json"
    config_path.write_text(json.dumps(config))
    open_clip.add_model_config(config_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms("tiny-test-clip")
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_weights(folder / "tiny.safetensors", state)
    torch.save(state, folder / "tiny.pt")
    return config_path, folder, model, preprocess, open_clip.get_tokenizer("tiny-test-clip")


def test_open_clip_checkpoint_embeddings_match_the_reference_model(open_clip_files):
    config_path, folder, model, preprocess, tokenizer = open_clip_files
    for weights in ("tiny.safetensors", "tiny.pt"):
        scorer = load_scorer(f"openclip:{config_path}:{folder / weights}")
        assert isinstance(scorer, OpenCLIPScorer)
        with torch.no_grad():
            expected_text = model.encode_text(tokenizer(TEXTS))
        assert torch.allclose(scorer.embed_text(TEXTS),
                              torch.nn.functional.normalize(expected_text, dim=-1), atol=1e-5)
        picture = _picture(32, 32)
        with torch.no_grad():
            expected = model.encode_image(preprocess(picture)[None])
        assert torch.allclose(scorer.embed_image(_to_tensor(picture)),
                              torch.nn.functional.normalize(expected, dim=-1), atol=1e-5)
        assert scorer.logit_scale() == pytest.approx(min(float(model.logit_scale.detach().exp()), 100))
    assert scorer_identity(scorer) == scorer_identity(
        OpenCLIPScorer(str(config_path), folder / "tiny.pt"))


def test_open_clip_resize_and_crop_follow_torchvision(open_clip_files):
    config_path, folder, model, preprocess, _ = open_clip_files
    scorer = OpenCLIPScorer(str(config_path), folder / "tiny.safetensors")
    for width, height in ((57, 40), (40, 75)):
        picture = _picture(width, height, seed=height)
        reference = preprocess(picture)[None]
        ours = scorer.preprocess(_to_tensor(picture))
        assert ours.shape == reference.shape
        assert (ours - reference).abs().mean() < 0.01
        with torch.no_grad():
            expected = model.encode_image(reference)
        assert _cosine(scorer.embed_image(_to_tensor(picture)), expected).item() > 0.999


def test_open_clip_errors_are_one_line_and_actionable(open_clip_files, monkeypatch, tmp_path):
    config_path, folder, *_ = open_clip_files
    with pytest.raises(ConfigError, match="openclip:ARCH:WEIGHTS"):
        load_scorer(f"openclip:{folder / 'tiny.safetensors'}")
    with pytest.raises(ModelNotFoundError, match="unknown open_clip architecture"):
        load_scorer(f"openclip:NoSuchNet-9:{folder / 'tiny.safetensors'}")
    with pytest.raises(MissingFileError, match="no weights file"):
        load_scorer(f"openclip:{config_path}:{tmp_path / 'missing.safetensors'}")
    with pytest.raises(ConfigError, match="hub"):
        load_scorer(f"openclip:hf-hub:org/model:{folder / 'tiny.safetensors'}")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if it were not installed
    with pytest.raises(MissingFileError, match="pip install open_clip_torch==3.3.0"):
        load_scorer(f"openclip:{config_path}:{folder / 'tiny.safetensors'}")


def test_hf_and_registry_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_scorer(f"hf:{tmp_path}")
    with pytest.raises(ModelNotFoundError, match="no-such-clip"):
        load_scorer("no-such-clip")
    with pytest.raises(ConfigError, match="empty"):
        load_scorer("  ")


def test_resize_center_crop_geometry():
    image = torch.arange(2 * 3 * 6 * 9, dtype=torch.float32).view(2, 3, 6, 9)
    assert resize_center_crop(image, 6, (6, 6)).equal(image[..., :, 2:8])  # round(1.5) = 2
    assert resize_center_crop(image, 6, (6, 6), floor_offsets=True).equal(image[..., :, 1:7])
    assert resize_center_crop(image, 4, (4, 4)).shape == (2, 3, 4, 4)
