"""Zero-shot classification: ranking maths on hand-made embeddings, and a tiny trained CLIP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from imagesynth.apps import classify_images, parse_labels
from imagesynth.apps.zeroshot import check_templates, label_embeddings, rank_labels
from imagesynth.errors import ConfigError, InputImageError

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class ColourScorer:
    """Embeds an image as its mean colour and a text by the colour words it contains."""

    name = "colour"

    def __init__(self, scale: float | None = None):
        self.scale = scale
        if scale is not None:
            self.logit_scale = lambda: scale

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(images.mean(dim=(2, 3)), dim=-1)

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        rows = [sum((torch.tensor(rgb) for word, rgb in COLOURS.items() if word in text),
                    torch.full((3,), 0.05)) for text in texts]
        return F.normalize(torch.stack(rows), dim=-1)


def _solid(path, rgb) -> str:
    Image.new("RGB", (8, 8), rgb).save(path)
    return str(path)


def test_probabilities_are_softmax_of_scaled_cosines(tmp_path):
    image = _solid(tmp_path / "orange.png", (255, 128, 0))
    for scorer, scale in ((ColourScorer(), 100.0), (ColourScorer(scale=7.5), 7.5)):
        [result] = classify_images(scorer, [image], "blue, red ,green", top_k=3)
        cos = {}
        for label in ("blue", "red", "green"):
            image_emb = scorer.embed_image(torch.tensor([[[[1.0]], [[128 / 255]], [[0.0]]]]))
            cos[label] = float(image_emb @ scorer.embed_text([label])[0])
        total = sum(math.exp(scale * c) for c in cos.values())
        assert [s.label for s in result.ranked] == ["red", "green", "blue"]
        for score in result.ranked:
            assert score.similarity == pytest.approx(cos[score.label], abs=1e-6)
            assert score.probability == pytest.approx(math.exp(scale * cos[score.label]) / total,
                                                      rel=1e-4)
        assert sum(s.probability for s in result.ranked) == pytest.approx(1.0, abs=1e-6)


def test_top_k_ties_and_template_ensembling():
    images = F.normalize(torch.tensor([[1.0, 1.0, 0.0]]), dim=-1)
    classes = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
                          dim=-1)
    [ranked] = rank_labels(images, classes, ["a", "b", "c"], logit_scale=10.0, top_k=2)
    assert [s.label for s in ranked] == ["a", "b"]  # a tie keeps the order labels were given
    assert ranked[0].probability == pytest.approx(ranked[1].probability)
    # ensembling averages unit-norm text embeddings over templates, then re-normalises
    scorer = ColourScorer()
    ensembled = label_embeddings(scorer, ["red"], ["a {} thing", "{} and green"])
    expected = F.normalize(scorer.embed_text(["a red thing"]) +
                           scorer.embed_text(["red and green"]), dim=-1)
    assert torch.allclose(ensembled, expected, atol=1e-6)


def test_bad_labels_templates_and_images_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no labels"):
        parse_labels(" , ,")
    with pytest.raises(ConfigError, match="twice"):
        parse_labels("cat,dog,cat")
    with pytest.raises(ConfigError, match="template"):
        check_templates(["an emoji"])
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(InputImageError, match="fake.png"):
        classify_images(ColourScorer(), [tmp_path / "fake.png"], "red,blue")
    with pytest.raises(ConfigError, match="top"):
        classify_images(ColourScorer(), [_solid(tmp_path / "r.png", (255, 0, 0))], "a", top_k=0)


@pytest.fixture(scope="module")
def trained_shapes_clip(tmp_path_factory):
    """A tiny CLIP trained for a few seconds on single-object ShapesWorld scenes."""
    from imagesynth.families.clip import train_clip
    from imagesynth.data import build_shapes_dataset
    from imagesynth.data.shapes_dataset import ShapesConfig

    root = tmp_path_factory.mktemp("shapes-clip")
    build_shapes_dataset(root / "data", ShapesConfig(size=16, count=160, seed=3,
                                                     two_object_fraction=0.0,
                                                     position_fraction=0.0, val_fraction=0.25))
    result = train_clip(root / "data", root / "run", preset="tiny",
                        overrides=dict(max_steps=40), show_progress=False)
    return root / "data", result.model_dir


def test_trained_tiny_clip_names_colours_better_than_chance(trained_shapes_clip):
    from imagesynth.apps import load_scorer
    from imagesynth.data.shapes import PALETTE

    data, model_dir = trained_shapes_clip
    records = [json.loads(line) for line in (data / "captions.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    colours = sorted(PALETTE)
    shapes = sorted({r["scene"]["objects"][0]["shape"] for r in records})
    results = classify_images(load_scorer(str(model_dir)), [data / r["file"] for r in val],
                              colours, templates=[f"a {{}} {shape}" for shape in shapes],
                              top_k=1)
    truth = [r["scene"]["objects"][0]["colour"] for r in val]
    accuracy = np.mean([res.ranked[0].label == t for res, t in zip(results, truth)])
    chance = 1 / len(colours)
    assert accuracy >= 0.6, f"top-1 colour accuracy {accuracy:.2f}, chance {chance:.2f}"
