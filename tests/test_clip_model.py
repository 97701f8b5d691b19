"""The CLIP model: the seed's contrastive loss, the training run, and the scorer round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagesynth.clip import CLIPScorer, load_clip
from imagesynth.clip.evaluation import shapes_zero_shot, topk_accuracy
from imagesynth.families.clip import PRESETS, random_zoom_shift, train_clip
from imagesynth.errors import ConfigError, DataError
from imagesynth.nets.clip import CLIPConfig, CLIPModel

TINY = PRESETS["tiny"][0]


def _reference_loss(image_emb, text_emb, scale):
    """The CLIP paper's pseudocode, in NumPy: symmetric cross-entropy over cosine logits."""
    logits = image_emb @ text_emb.T * scale
    labels = np.arange(len(logits))

    def cross_entropy(l, axis):
        l = l - l.max(axis=axis, keepdims=True)
        log_probs = l - np.log(np.exp(l).sum(axis=axis, keepdims=True))
        return -np.take_along_axis(log_probs, np.expand_dims(labels, axis), axis).mean()

    return (cross_entropy(logits, 1) + cross_entropy(logits, 0)) / 2


def test_contrastive_loss_matches_the_pseudocode():
    torch.manual_seed(0)
    model = CLIPModel(TINY)
    images, text = torch.rand(6, 3, 16, 16), torch.randn(6, 384)
    loss, metrics = model.contrastive_loss(images, text)
    with torch.no_grad():
        expected = _reference_loss(model.encode_image(images).double().numpy(),
                                   model.encode_text_features(text).double().numpy(),
                                   float(model.scale()))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= metrics["batch_accuracy"] <= 1.0


def test_shared_captions_count_as_hits_in_batch_accuracy():
    torch.manual_seed(0)
    model = CLIPModel(TINY)
    images = torch.rand(4, 3, 16, 16)
    text = torch.randn(1, 384).expand(4, 384)  # one caption shared by all four images
    with_ids, metrics = model.contrastive_loss(images, text, torch.zeros(4, dtype=torch.long))
    without, _ = model.contrastive_loss(images, text)
    assert with_ids == without and metrics["batch_accuracy"] == 1.0


def test_linear_text_projection_is_one_matrix_and_saves_and_loads(tmp_path):
    import dataclasses

    from safetensors.torch import load_file, save_file

    config = dataclasses.replace(TINY, text_hidden=0)
    torch.manual_seed(0)
    model = CLIPModel(config)
    weights = [p for p in model.text_projection.parameters()]
    assert [tuple(w.shape) for w in weights] == [(config.embed_dim, config.text_dim)]
    text = torch.randn(3, 384)
    expected = torch.nn.functional.normalize(text @ weights[0].T, dim=-1)
    assert torch.allclose(model.encode_text_features(text), expected, atol=1e-6)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    restored = CLIPModel(config)
    restored.load_state_dict(load_file(tmp_path / "m.safetensors"))
    assert torch.equal(restored.encode_text_features(text), model.encode_text_features(text))


def test_config_and_input_validation():
    with pytest.raises(ConfigError, match="multiple of 8"):
        CLIPConfig(image_size=30)
    with pytest.raises(ConfigError, match="text_hidden"):
        CLIPConfig(text_hidden=-1)
    with pytest.raises(ConfigError, match="images"):
        CLIPModel(TINY).encode_image(torch.rand(2, 1, 16, 16))


def test_augmentation_is_seeded_and_keeps_shape():
    images = torch.rand(3, 3, 16, 16)
    a = random_zoom_shift(images, torch.Generator().manual_seed(1))
    b = random_zoom_shift(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and torch.equal(a, b)


def test_topk_accuracy_counts_ranks():
    image_emb = torch.eye(3)
    label_emb = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])
    scores = topk_accuracy(image_emb, label_emb, torch.tensor([0, 1, 2]), ks=(1, 2))
    assert scores == {"top1": pytest.approx(1 / 3), "top2": 1.0}


def test_training_writes_a_loadable_model_that_learned(tiny_clip_run, minilm):
    root, result = tiny_clip_run
    assert result.steps == 60 and (result.model_dir / "model.safetensors").is_file()
    assert set(result.metrics) >= {"image_to_text_recall@1", "text_to_image_recall@5"}
    scorer = load_clip(str(result.model_dir), text_encoder=minilm)
    assert isinstance(scorer, CLIPScorer)
    emb = scorer.embed_text(["a red circle", "a blue square"])
    assert emb.shape == (2, TINY.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    zero_shot = shapes_zero_shot(scorer, size=16, per_pair=4)
    assert zero_shot["top1"] > 2 / 24  # far above chance (1/24) after 60 tiny steps


def test_shapes_zero_shot_prompt_ensemble_averages_unit_class_embeddings(tiny_clip_run, minilm):
    """One template equals itself as a one-item ensemble; a bad template names the field."""
    from imagesynth.clip.evaluation import SHAPES_ENSEMBLE
    from imagesynth.errors import ConfigError

    scorer = load_clip(str(tiny_clip_run[1].model_dir), text_encoder=minilm)
    plain = shapes_zero_shot(scorer, size=16, per_pair=2)
    assert plain == shapes_zero_shot(scorer, size=16, per_pair=2, templates=("a {colour} {shape}",))
    ensemble = shapes_zero_shot(scorer, size=16, per_pair=2, templates=SHAPES_ENSEMBLE)
    assert ensemble["templates"] == list(SHAPES_ENSEMBLE) and 0 <= ensemble["top1"] <= 1
    with pytest.raises(ConfigError) as info:
        shapes_zero_shot(scorer, size=16, per_pair=2, templates=("a {} {}",))
    assert info.value.field == "template"


def test_image_embedding_is_differentiable(tiny_clip_run, minilm):
    _, result = tiny_clip_run
    scorer = load_clip(str(result.model_dir), text_encoder=minilm)
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    (scorer.embed_image(images) @ scorer.embed_text(["a red circle"]).T).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_training_errors_are_named(tmp_path):
    with pytest.raises(DataError, match="preset"):
        train_clip(tmp_path, tmp_path / "run", preset="huge")
    with pytest.raises(DataError):
        train_clip(tmp_path / "absent", tmp_path / "run", preset="tiny")


def test_cli_text_projection_choice_is_checked(tmp_path, capsys):
    from imagesynth.cli import run

    code = run(["train", "clip", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                "--preset", "tiny", "--text-projection", "deep"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "text_projection" in err and len(err.splitlines()) == 1


def test_cli_weight_decay_reaches_the_optimiser_settings(tmp_path, monkeypatch, minilm,
                                                         shapes_folder):
    import json

    import imagesynth.text
    from imagesynth.cli import run

    monkeypatch.setattr(imagesynth.text, "load_text_encoder", lambda *a, **k: minilm)
    code = run(["train", "clip", "--data", str(shapes_folder(16)), "--out", str(tmp_path / "r"),
                "--preset", "tiny", "--steps", "2", "--weight-decay", "0.1"])
    assert code == 0
    assert json.loads((tmp_path / "r" / "train_config.json").read_text())["weight_decay"] == 0.1


class _ColourScorer:
    """Embeds images by mean colour and texts by the colour words they contain: known answers."""

    WORDS = {"red": 0, "crimson": 0, "green": 1, "grass": 1, "blue": 2, "sky": 2}

    def embed_image(self, images):
        return torch.nn.functional.normalize(images.mean(dim=(2, 3)), dim=-1)

    def embed_text(self, texts):
        rows = torch.full((len(texts), 3), 1e-3)
        for row, text in enumerate(texts):
            for word in text.split():
                if word in self.WORDS:
                    rows[row, self.WORDS[word]] = 1.0
        return torch.nn.functional.normalize(rows, dim=-1)


def test_paraphrase_retrieval_reports_descriptions_against_the_names_baseline(tmp_path):
    import json

    from PIL import Image

    from imagesynth.clip.evaluation import paraphrase_retrieval

    colours = {"red apple": (220, 10, 10), "green apple": (10, 220, 10), "blue car": (10, 10, 220)}
    for i, (name, rgb) in enumerate(colours.items()):
        Image.new("RGB", (16, 16), rgb).save(tmp_path / f"{i}.png")
    (tmp_path / "captions.jsonl").write_text("\n".join(
        json.dumps({"file": f"{i}.png", "caption": name, "name": name})
        for i, name in enumerate(colours)))
    pairs = [("a crimson fruit", "red apple"), ("the colour of the sky", "blue car"),
             ("a fruit the colour of grass", "red apple")]  # describes the green apple instead
    result = paraphrase_retrieval(_ColourScorer(), tmp_path, pairs, image_size=16, k=1)
    assert result["top1_rate"] == pytest.approx(2 / 3)
    assert result["name_top1_rate"] == 1.0  # every target's own name finds it
    assert result["text_top1_rate"] == pytest.approx(2 / 3)  # same colour words, no images
    assert [d["best_match"] for d in result["details"]] == ["red apple", "blue car", "green apple"]
    with pytest.raises(ConfigError) as info:
        paraphrase_retrieval(_ColourScorer(), tmp_path, [("x", "rocket")], image_size=16)
    assert info.value.field == "paraphrases"


def test_adversarial_training_perturbs_within_eps_and_raises_the_loss():
    from imagesynth.families.clip import CLIPObjective

    torch.manual_seed(0)
    model = CLIPModel(TINY)
    images_u8 = (torch.rand(6, 3, 16, 16) * 255).to(torch.uint8)
    batch = (images_u8, torch.arange(6)[:, None])
    objective = CLIPObjective(torch.randn(6, 384), augment=False, adversarial_eps=0.05)
    images = images_u8.float() / 255
    features = objective.text_features
    perturbed = objective._perturb(model, images, features, torch.arange(6),
                                   torch.Generator().manual_seed(3))
    again = objective._perturb(model, images, features, torch.arange(6),
                               torch.Generator().manual_seed(3))
    assert torch.equal(perturbed, again)  # seeded by the step's generator: resume stays exact
    assert (perturbed - images).abs().max() <= 0.05 + 1e-6
    assert perturbed.min() >= 0 and perturbed.max() <= 1
    clean, _ = model.contrastive_loss(images, features)
    attacked, _ = model.contrastive_loss(perturbed, features)
    assert attacked > clean
    loss, _ = objective(model, batch, torch.Generator().manual_seed(3))
    assert torch.isfinite(loss) and all(p.grad is None for p in model.parameters())
    with pytest.raises(DataError) as info:
        CLIPObjective(features, adversarial_eps=0.9)
    assert info.value.field == "adversarial_eps"
