"""A1111 prompt weighting and 75-token chunking, checked against diffusers' own encode_prompt."""

from __future__ import annotations

import pytest
import torch

from sd_tiny import tiny_pipeline

from imagesynth.errors import ConfigError
from imagesynth.sd.prompt_weights import (BREAK, apply_weights, encode_prompt_pair,
                                          encode_weighted_prompt, pad_to_same_length,
                                          parse_prompt_attention, tokenize_weighted_prompt)

LETTERS = "abcdefghijklmnopqrstuvwxyz"
PLAIN = "a photo: of a cat, oil painting"


def words(count: int, start: int = 0) -> str:
    """`count` one-letter words: one CLIP token each, no commas."""
    return " ".join(LETTERS[(start + i) % 26] for i in range(count))


@pytest.fixture(scope="module")
def sd1():
    return tiny_pipeline("sd1")


@pytest.fixture(scope="module")
def sd2():
    return tiny_pipeline("sd2")


@pytest.fixture(scope="module")
def sdxl():
    return tiny_pipeline("sdxl")


def encode(pipe, prompt, **options):
    with torch.no_grad():
        return encode_weighted_prompt(pipe.text_encoder, pipe.tokenizer, prompt, **options)


# --- parser: the examples of A1111's docstring, then the rest of the syntax ---------------------

A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
      ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
]

MORE_SYNTAX = [
    ("((masterpiece)), cat", [("masterpiece", 1.21), (", cat", 1.0)]),
    ("[blurry]", [("blurry", 1 / 1.1)]),
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    ("[[a]] (b:1.5)", [("a", 1 / 1.21), (" ", 1.0), ("b", 1.5)]),
    ("a ( red : 0.5 ) cat", [("a ", 1.0), (" red ", 0.5), (" cat", 1.0)]),
    ("((a:2) b)", [("a", 2.2), (" b", 1.1)]),
    ("style: oil, 16:9 ratio) x]", [("style: oil, 16:9 ratio) x]", 1.0)]),
    ("\\\\ and \\x \\[y\\)", [("\\ and x [y)", 1.0)]),
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("a BREAK BREAK b", [("a", 1.0), BREAK, ("", 1.0), BREAK, ("b", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), BREAK, ("b", 1.1)]),
    ("", [("", 1.0)]),
]


def _assert_parsed(got, expected):
    assert [text for text, _ in got] == [text for text, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


@pytest.mark.parametrize("text,expected", A1111_EXAMPLES)
def test_parser_matches_a1111_docstring_exactly(text, expected):
    got = parse_prompt_attention(text)
    _assert_parsed(got, expected)
    # same float operations in the same order as A1111: the docstring's last bits too
    assert got == expected


@pytest.mark.parametrize("text,expected", MORE_SYNTAX)
def test_parser_syntax(text, expected):
    _assert_parsed(parse_prompt_attention(text), expected)


def test_parser_rejects_a_malformed_weight():
    with pytest.raises(ConfigError, match="prompt"):
        parse_prompt_attention("(red:1.2.3)")


# --- equality with diffusers for unweighted prompts --------------------------------------------

@pytest.mark.parametrize("kind,prompt", [("sd1", PLAIN), ("sd2", PLAIN), ("sd1", words(75))])
def test_plain_prompt_equals_diffusers_encode_prompt(kind, prompt, sd1, sd2):
    pipe = {"sd1": sd1, "sd2": sd2}[kind]
    with torch.no_grad():
        expected, negative = pipe.encode_prompt(prompt, "cpu", 1, True)
    states, pooled = encode(pipe, prompt)
    assert states.shape == (1, 77, 32) and pooled is None
    assert torch.equal(states, expected)
    assert torch.equal(encode(pipe, "")[0], negative)


def test_clip_skip_follows_diffusers(sd1):
    # diffusers' formula, written out: its encode_prompt reaches for `text_model`, which
    # transformers 5's CLIPTextModel no longer has
    ids = sd1.tokenizer(PLAIN, padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = sd1.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        expected = sd1.text_encoder.final_layer_norm(hidden)
    states, _ = encode(sd1, PLAIN, clip_skip=1)
    assert torch.equal(states, expected)
    assert not torch.equal(states, encode(sd1, PLAIN)[0])


def test_sdxl_penultimate_and_pooled_equal_diffusers(sdxl):
    with torch.no_grad():
        expected, _, expected_pooled, _ = sdxl.encode_prompt(
            PLAIN, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
        first, none = encode_weighted_prompt(sdxl.text_encoder, sdxl.tokenizer, PLAIN,
                                             hidden_state="penultimate")
        second, pooled = encode_weighted_prompt(sdxl.text_encoder_2, sdxl.tokenizer_2, PLAIN,
                                                hidden_state="penultimate")
    assert none is None and pooled.shape == (1, 32)
    assert torch.equal(torch.cat([first, second], dim=-1), expected)
    assert torch.equal(pooled, expected_pooled)


# --- weighting -----------------------------------------------------------------------------------

def test_weight_scales_only_its_tokens_before_the_mean_rescale(sd1):
    # the penultimate layer: the final layer norm of the random tiny encoder leaves a mean of ~0
    plain, _ = encode(sd1, "a red cat", hidden_state="penultimate")
    weighted, _ = encode(sd1, "a (red:1.5) cat", hidden_state="penultimate")
    tokenizer = sd1.tokenizer
    start = 1 + len(tokenizer("a", add_special_tokens=False).input_ids)  # after BOS and "a"
    count = len(tokenizer("red", add_special_tokens=False).input_ids)
    multipliers = torch.ones(77)
    multipliers[start:start + count] = 1.5
    scaled = plain * multipliers[None, :, None]
    # A1111's rescale: one scalar for the whole chunk, restoring the unweighted mean
    scale = plain.mean() / scaled.mean()
    assert abs(float(scale) - 1.0) > 1e-4  # the rescale is not a no-op here
    unscaled = weighted / scale
    others = torch.ones(77, dtype=torch.bool)
    others[start:start + count] = False
    torch.testing.assert_close(unscaled[:, others], plain[:, others], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(unscaled[:, ~others], 1.5 * plain[:, ~others], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weighted.mean(), plain.mean(), rtol=1e-5, atol=1e-7)
    # "No norm" emphasis: the plain product
    no_norm, _ = encode(sd1, "a (red:1.5) cat", rescale_mean=False, hidden_state="penultimate")
    torch.testing.assert_close(no_norm, scaled, rtol=0, atol=0)


def test_a_mean_of_about_zero_is_not_divided_by(sd1):
    # layer-normed states of the random encoder have a mean of ~1e-9: A1111's rescale gives Inf
    plain, _ = encode(sd1, "a red cat")
    assert plain.mean().abs() < 1e-6 * plain.abs().mean()
    weighted, _ = encode(sd1, "a (red:1.5) cat")
    no_norm, _ = encode(sd1, "a (red:1.5) cat", rescale_mean=False)
    assert torch.isfinite(weighted).all()
    assert torch.equal(weighted, no_norm)


def test_weight_one_in_parens_equals_plain_prompt(sd1):
    plain, _ = encode(sd1, "a red cat")
    assert torch.equal(encode(sd1, "a (red:1.0) cat")[0], plain)
    assert not torch.equal(encode(sd1, "a (red) cat")[0], plain)


def test_apply_weights_keeps_the_mean():
    states = torch.randn(1, 77, 8) + 0.5
    weights = [1.0] * 77
    weights[3] = 2.0
    out = apply_weights(states, weights)
    torch.testing.assert_close(out.mean(), states.mean())
    torch.testing.assert_close(out[0, 3] / out[0, 4], 2 * states[0, 3] / states[0, 4])


# --- chunking ------------------------------------------------------------------------------------

def test_long_prompt_is_two_chunks(sd1):
    tokenizer = sd1.tokenizer
    prompt = words(100)
    chunks = tokenize_weighted_prompt(tokenizer, prompt)
    assert [c.length for c in chunks] == [75, 25]
    for chunk in chunks:
        assert len(chunk.tokens) == 77
        assert chunk.tokens[0] == tokenizer.bos_token_id
        assert chunk.tokens[-1] == tokenizer.eos_token_id
    # the second chunk is laid out as the tokenizer pads its last 25 words alone
    assert list(chunks[1].tokens) == tokenizer(words(25, 75), padding="max_length",
                                               max_length=77).input_ids
    states, _ = encode(sd1, prompt)
    assert states.shape == (1, 154, 32)
    assert torch.equal(states[:, :77], encode(sd1, words(75))[0])
    assert torch.equal(states[:, 77:], encode(sd1, words(25, 75))[0])


def test_sd2_chunks_pad_after_eos(sd2):
    tokenizer = sd2.tokenizer
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    chunks = tokenize_weighted_prompt(tokenizer, words(80))
    assert list(chunks[1].tokens) == tokenizer(words(5, 75), padding="max_length",
                                               max_length=77).input_ids
    assert chunks[1].tokens[7:] == (tokenizer.pad_token_id,) * 70


@pytest.mark.parametrize("prompt,backtrack,lengths", [
    (words(60) + ", " + words(40, 60), None, [61, 40]),  # comma 15 tokens before the end: cut
    (words(60) + ", " + words(40, 60), 0, [75, 26]),     # backtracking off
    (words(60) + ", " + words(40, 60), 14, [75, 26]),    # allowed distance below 15
    (words(40) + ", " + words(60, 40), None, [75, 26]),  # comma 35 tokens before the end: too far
])
def test_chunks_break_at_a_late_comma(sd1, prompt, backtrack, lengths):
    options = {} if backtrack is None else {"comma_backtrack": backtrack}  # None: A1111's 20
    chunks = tokenize_weighted_prompt(sd1.tokenizer, prompt, **options)
    assert [c.length for c in chunks] == lengths
    comma = sd1.tokenizer.get_vocab()[",</w>"]
    if lengths[0] == 61:
        assert chunks[0].tokens[61] == comma and chunks[1].tokens[1] != comma


def test_break_splits_where_it_stands(sd1):
    chunks = tokenize_weighted_prompt(sd1.tokenizer, "a b BREAK c d")
    assert [c.length for c in chunks] == [2, 2]
    states, _ = encode(sd1, "a b BREAK c d")
    assert states.shape == (1, 154, 32)
    assert torch.equal(states[:, :77], encode(sd1, "a b")[0])
    assert torch.equal(states[:, 77:], encode(sd1, "c d")[0])
    # a BREAK at the start gives an empty first chunk, as in A1111
    assert [c.length for c in tokenize_weighted_prompt(sd1.tokenizer, "BREAK a")] == [0, 1]


def test_weights_follow_their_tokens_into_the_next_chunk(sd1):
    chunks = tokenize_weighted_prompt(sd1.tokenizer, words(74) + " (x y:1.5)")
    assert chunks[0].weights[75] == 1.5 and chunks[0].weights[76] == 1.0
    assert chunks[1].weights[:3] == (1.0, 1.5, 1.0) and chunks[1].weights[3:] == (1.0,) * 74


def test_sdxl_pooled_comes_from_the_first_chunk(sdxl):
    with torch.no_grad():
        long_states, pooled = encode_weighted_prompt(sdxl.text_encoder_2, sdxl.tokenizer_2,
                                                     words(100), hidden_state="penultimate")
        _, first_pooled = encode_weighted_prompt(sdxl.text_encoder_2, sdxl.tokenizer_2,
                                                 words(75), hidden_state="penultimate")
    assert long_states.shape == (1, 154, 32)
    assert torch.equal(pooled, first_pooled)


# --- cond / uncond lengths ----------------------------------------------------------------------

def test_pad_to_same_length_repeats_the_encoded_empty_prompt(sd1):
    cond, _ = encode(sd1, words(160))
    uncond, _ = encode(sd1, "blurry")
    empty, _ = encode(sd1, "")
    assert cond.shape[1] == 231 and empty.abs().sum() > 0
    a, b = pad_to_same_length(cond, uncond, empty)
    assert a is cond and b.shape == cond.shape
    assert torch.equal(b[:, :77], uncond)
    assert torch.equal(b[:, 77:154], empty) and torch.equal(b[:, 154:], empty)
    b2, a2 = pad_to_same_length(uncond, cond, empty)
    assert torch.equal(b2, b) and a2 is cond
    with pytest.raises(ConfigError, match="prompt_embeds"):
        pad_to_same_length(cond[:, :100], uncond, empty)


def test_encode_prompt_pair(sd1):
    with torch.no_grad():
        cond, uncond, pooled, negative_pooled = encode_prompt_pair(
            sd1.text_encoder, sd1.tokenizer, "a (cat:1.2)", words(90))
    assert cond.shape == uncond.shape == (1, 154, 32)
    assert pooled is None and negative_pooled is None
    assert torch.equal(cond[:, :77], encode(sd1, "a (cat:1.2)")[0])
    assert torch.equal(cond[:, 77:], encode(sd1, "")[0])
    assert torch.equal(uncond, encode(sd1, words(90))[0])


def test_bad_options_are_config_errors(sd1):
    with pytest.raises(ConfigError, match="hidden_state"):
        encode(sd1, "a", hidden_state="middle")
    with pytest.raises(ConfigError, match="clip_skip"):
        encode(sd1, "a", clip_skip=3)
    with pytest.raises(ConfigError, match="chunk_length"):
        tokenize_weighted_prompt(sd1.tokenizer, "a", chunk_length=76)
