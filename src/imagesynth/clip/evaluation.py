"""Measurements for CLIP model cards: zero-shot accuracy, cross-style emoji, paraphrase retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.folder import CaptionedImageFolder
from ..data.shapes import HELD_OUT_PAIRS, PALETTE, SHAPES, Scene, ShapeObject, render_scene
from ..errors import ConfigError
from ..scorers import Scorer


@torch.no_grad()
def embed_images(scorer: Scorer, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Unit-norm embeddings of images in [0, 1], in batches."""
    return torch.cat([scorer.embed_image(images[i:i + batch_size])
                      for i in range(0, len(images), batch_size)]).cpu()


@torch.no_grad()
def embed_labels(scorer: Scorer, labels: list[str], templates: list[str]) -> torch.Tensor:
    """One unit-norm embedding per label: the normalised mean over templates (prompt ensembling)."""
    per_template = [torch.cat([scorer.embed_text([t.format(label) for label in labels[i:i + 256]])
                               for i in range(0, len(labels), 256)]).cpu()
                    for t in templates]
    mean = torch.stack(per_template).mean(dim=0)
    return torch.nn.functional.normalize(mean, dim=-1)


def topk_accuracy(image_emb: torch.Tensor, label_emb: torch.Tensor, targets: torch.Tensor,
                  ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Fraction of images whose true label ranks within the top k."""
    return rank_accuracy(target_ranks(image_emb, label_emb, targets), ks)


def rank_accuracy(rank: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Fraction of 0-based ranks below each k, as {"top1": ..., "top5": ...}."""
    return {f"top{k}": float((rank < k).float().mean()) for k in ks}


def target_ranks(image_emb: torch.Tensor, label_emb: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each image's true label among all labels (0 = the best match)."""
    similarity = image_emb @ label_emb.T
    return (similarity > similarity.gather(1, targets[:, None])).sum(dim=1)


def _folder_images(folder: CaptionedImageFolder) -> torch.Tensor:
    return torch.stack([(folder[i]["image"] + 1) / 2 for i in range(len(folder))])


def emoji_zero_shot(scorer: Scorer, folder: str | Path, image_size: int = 64,
                    templates: tuple[str, ...] = ("{}",)) -> dict:
    """Classify every image of an emoji folder among all emoji names present in it."""
    data = CaptionedImageFolder(folder, resolution=image_size)
    records = _records(Path(folder))
    names = sorted({records[item.file]["name"] for item in data.items})
    index = {name: i for i, name in enumerate(names)}
    targets = torch.tensor([index[records[item.file]["name"]] for item in data.items])
    scores = topk_accuracy(embed_images(scorer, _folder_images(data)),
                           embed_labels(scorer, names, list(templates)), targets)
    return {"classes": len(names), "images": len(targets), "templates": list(templates), **scores}


def paraphrase_retrieval(scorer: Scorer, folder: str | Path, pairs: list[tuple[str, str]],
                         image_size: int = 64, k: int = 10) -> dict:
    """For each (description, emoji name) pair: is that emoji in the top-k images for the text?"""
    data = CaptionedImageFolder(folder, resolution=image_size)
    records = _records(Path(folder))
    names = [records[item.file]["name"] for item in data.items]
    image_emb = embed_images(scorer, _folder_images(data))
    text_emb = scorer.embed_text([description for description, _ in pairs]).cpu()
    similarity = text_emb @ image_emb.T
    hits, details = 0, []
    for row, (description, name) in enumerate(pairs):
        top = similarity[row].topk(min(k, len(names))).indices.tolist()
        found = any(names[i] == name for i in top)
        hits += found
        details.append({"description": description, "emoji": name, f"in_top{k}": found,
                        "best_match": names[top[0]]})
    return {f"top{k}_rate": hits / len(pairs), "pairs": len(pairs), "details": details}


def load_paraphrases(path: str | Path) -> list[tuple[str, str]]:
    """The fixed paraphrase list: JSON {"pairs": [[description, emoji name], ...]}."""
    return [tuple(pair) for pair in json.loads(Path(path).read_text())["pairs"]]


def _records(folder: Path) -> dict[str, dict]:
    lines = (folder / "captions.jsonl").read_text().splitlines()
    return {(r := json.loads(line))["file"]: r for line in lines if line.strip()}


#: generic phrasings of a colour-shape class, averaged for prompt ensembling (CLIP paper §3.1.4)
SHAPES_ENSEMBLE = ("a {colour} {shape}", "a {colour} {shape} on the left",
                   "a {colour} {shape} on the right", "a {colour} {shape} at the top",
                   "a {colour} {shape} at the bottom", "a {colour} {shape} above a blue circle",
                   "one {colour} {shape}", "the {colour} {shape}", "{colour} {shape}",
                   "a {shape} that is {colour}", "a {colour} coloured {shape}")


def shapes_zero_shot(scorer: Scorer, size: int = 32, per_pair: int = 20, seed: int = 0,
                     templates: tuple[str, ...] = ("a {colour} {shape}",)) -> dict:
    """Colour-and-shape zero-shot over all 24 pairs on rendered single-object scenes.

    Accuracy is reported overall and separately for the held-out pairs a default ShapesWorld
    build never shows, which measures compositional generalisation. Each template holds
    `{colour}` and `{shape}`; several are averaged per class (prompt ensembling).
    """
    rng = np.random.default_rng(seed)
    pairs = [(c, s) for c in PALETTE for s in SHAPES]
    images, targets = [], []
    for target, (colour, shape) in enumerate(pairs):
        for _ in range(per_pair):
            side = rng.uniform(0.25, 0.45) * size
            left, top = rng.uniform(0, size - side, 2)
            scene = Scene(size=size, objects=(ShapeObject(colour, shape, float(left), float(top),
                                                          float(side)),), position=None)
            array = np.asarray(render_scene(scene), dtype=np.float32) / 255.0
            images.append(torch.from_numpy(array).permute(2, 0, 1))
            targets.append(target)
    for template in templates:
        if "{colour}" not in template or "{shape}" not in template:
            raise ConfigError(f"template {template!r} needs {{colour}} and {{shape}}",
                              field="template", fix='e.g. "a {colour} {shape}"')
    image_emb = embed_images(scorer, torch.stack(images))
    per_template = [embed_labels(scorer, [t.format(colour=c, shape=s) for c, s in pairs], ["{}"])
                    for t in templates]
    label_emb = torch.nn.functional.normalize(torch.stack(per_template).mean(dim=0), dim=-1)
    targets_t = torch.tensor(targets)
    held = torch.tensor([(c, s) in HELD_OUT_PAIRS for c, s in pairs])[targets_t]
    predictions = (image_emb @ label_emb.T).argmax(dim=1)
    correct = (predictions == targets_t).float()
    return {"classes": len(pairs), "images": len(targets), "top1": float(correct.mean()),
            "top1_seen_pairs": float(correct[~held].mean()),
            "top1_held_out_pairs": float(correct[held].mean()), "seed": seed,
            "templates": list(templates)}
