"""Paraphrase sets (documented procedure, held-out vocabulary) and prompt expansion (`--expand`)."""

from __future__ import annotations

import numpy as np
import pytest

from imagesynth.data import ShapesConfig, build_shapes_dataset
from imagesynth.data.shapes import COLOURS, HELD_OUT_PAIRS, PALETTE, SHAPES
from imagesynth.errors import ConfigError
from imagesynth.families.diffusion import train_diffusion
from imagesynth.text.expand import (CAPTIONS_FILE, PromptExpander, read_captions, recombine,
                                    word_classes)
from imagesynth.text.paraphrase import (TEMPLATES, _srgb_to_lab, check_held_out,
                                        colour_lexicon, paraphrase, shape_lexicon, split_of,
                                        word_splits, words_for)


def test_cielab_matches_the_published_values_of_the_primaries():
    # CIE 1976 L*a*b* of sRGB red/green/blue/white under D65 (e.g. Lindbloom's calculator)
    expected = {(255, 0, 0): (53.24, 80.09, 67.20), (0, 255, 0): (87.73, -86.18, 83.18),
                (0, 0, 255): (32.30, 79.19, -107.86), (255, 255, 255): (100.0, 0.0, 0.0)}
    for rgb, lab in expected.items():
        assert np.allclose(_srgb_to_lab(rgb), lab, atol=0.05)


def test_colour_lexicon_follows_its_rule():
    lexicon = colour_lexicon()
    assert len(lexicon) >= 30
    assert set(lexicon.values()) == set(COLOURS)  # every palette colour has a name
    assert not any(colour in word for word in lexicon for colour in PALETTE)  # no leaked words
    assert lexicon["crimson"] == "red" and lexicon["turquoise"] == "cyan"
    assert lexicon["gold"] == "yellow" and "lavender" not in lexicon  # too far from purple


def test_splits_are_fixed_disjoint_and_give_every_meaning_a_test_word():
    for lexicon in (colour_lexicon(), shape_lexicon()):
        splits = word_splits(lexicon)
        assert splits == word_splits(dict(reversed(list(lexicon.items()))))  # order-free
        for meaning in set(lexicon.values()):
            assert words_for(lexicon, meaning, "test")
            assert not set(words_for(lexicon, meaning, "test")) & set(
                words_for(lexicon, meaning, "train"))
    assert {split_of(t) for t in TEMPLATES} == {"train", "test"}


def test_paraphrases_use_only_their_split_and_keep_the_canonical_meaning():
    rng = np.random.default_rng(0)
    colours, shapes = word_splits(colour_lexicon()), word_splits(shape_lexicon())
    for _ in range(50):
        colour, shape = COLOURS[rng.integers(8)], SHAPES[rng.integers(3)]
        item = paraphrase(colour, shape, "all", "test", rng)
        assert item.canonical == f"a {colour} {shape}"
        words = item.text.replace(",", " ").replace(":", " ").replace("-", " ").split()
        assert any(colours.get(w) == "test" and colour_lexicon()[w] == colour for w in words)
        assert any(shapes.get(w) == "test" and shape_lexicon()[w] == shape for w in words)
    with pytest.raises(ValueError):
        paraphrase("violet", "circle", "colour", "test", rng)


def test_check_held_out_finds_words_used_in_captions():
    assert check_held_out(["crimson", "orb"], ["a crimson circle", "a red orb, big"]) == \
        ["crimson", "orb"]
    assert check_held_out(["crimson"], ["a red circle"]) == []


CAPTIONS = ["a red circle", "a blue circle", "a red square", "a blue square on the left",
            "a red square on the left", "a red circle on the right", "a blue circle on the right",
            "a blue square", "a blue square on the right", "a red circle on the left"]


def test_word_classes_are_read_off_the_captions():
    classes = word_classes(CAPTIONS)
    assert classes["red"] == {"red", "blue"} and classes["circle"] == {"circle", "square"}
    assert classes["left"] == {"left", "right"} and classes["a"] == {"a"}
    new = recombine(CAPTIONS, classes)
    assert "a blue circle on the left" in new and "a red square on the right" in new
    assert not set(new) & set(CAPTIONS)


def test_expander_retrieves_reordered_and_recombined_captions(minilm_words):
    expander = PromptExpander(minilm_words, CAPTIONS)
    assert expander("a red circle").expanded == "a red circle"  # a caption stays as it is
    assert expander("a red circle").score == 1.0
    reordered = expander("on the left: a square, blue")
    assert reordered.expanded == "a blue square on the left"
    recombined = expander("a circle, blue, on the left side")
    assert recombined.expanded == "a blue circle on the left" and recombined.recombined
    again = PromptExpander(minilm_words, list(reversed(CAPTIONS)))
    assert again("on the left: a square, blue") == reordered  # deterministic, order-free
    with pytest.raises(ConfigError) as empty:
        PromptExpander(minilm_words, [])
    assert empty.value.field == "expand"
    with pytest.raises(ConfigError) as scoring:
        PromptExpander(minilm_words, CAPTIONS, scoring="bleu")
    assert scoring.value.field == "scoring"


def test_expander_ablations_drop_recombination_and_token_matching(minilm_words):
    plain = PromptExpander(minilm_words, CAPTIONS, recombined=False)
    assert plain.recombined == [] and plain.candidates == sorted(CAPTIONS)
    assert plain("a circle, blue, on the left side").expanded in CAPTIONS
    pooled = PromptExpander(minilm_words, CAPTIONS, scoring="pooled")
    assert pooled("a red circle").expanded == "a red circle"
    assert pooled("on the left: a square, blue").expanded in pooled.candidates


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm):
    root = tmp_path_factory.mktemp("expand-model")
    build_shapes_dataset(root / "data", ShapesConfig(count=16, size=16, seed=0))
    return train_diffusion(root / "data", root / "run", preset="tiny", text_encoder=minilm,
                           overrides=dict(max_steps=2, batch_size=4), show_progress=False
                           ).model_dir


def test_trained_model_folder_carries_its_captions(tiny_model):
    captions = read_captions(tiny_model)
    assert captions and captions == sorted(set(captions))
    assert "a" in " ".join(captions)
    from imagesynth.registry import read_sums

    assert CAPTIONS_FILE in read_sums(tiny_model)
    assert all(pair not in " ".join(captions) for pair in (" ".join(p) for p in HELD_OUT_PAIRS))


def test_generate_expand_is_recorded_and_reproduces(tiny_model, minilm, tmp_path):
    from imagesynth.generation import GenerateConfig, generate, reproduce_image
    from imagesynth.io.pngmeta import save_png
    from imagesynth.pipeline import load_pipeline

    pipe = load_pipeline(str(tiny_model), text_encoder=minilm)
    typed = "just one thing, " + read_captions(tiny_model)[0]
    config = GenerateConfig(prompt=typed, model=str(tiny_model), steps=2, n=2, expand=True)
    first = generate(config, pipe=pipe)
    second = generate(config, pipe=pipe)
    recipe = first.recipes[0]
    assert recipe["typed_prompt"] == typed and recipe["prompt"] != typed
    assert recipe["prompt"] in pipe.captions + pipe._expander.recombined
    assert recipe["expansion"]["expanded"] == recipe["prompt"]
    assert [r["prompt"] for r in second.recipes] == [r["prompt"] for r in first.recipes]
    assert first.images[1].tobytes() == second.images[1].tobytes()
    path = tmp_path / "expanded.png"
    save_png(first.images[0], path, recipe)
    report = reproduce_image(path, pipe_loader=lambda name: pipe)
    assert report.identical
    plain = generate(GenerateConfig(prompt=typed, model=str(tiny_model), steps=2), pipe=pipe)
    assert plain.recipes[0]["prompt"] == typed and "typed_prompt" not in plain.recipes[0]
