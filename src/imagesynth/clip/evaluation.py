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
    """For each (description, emoji name) pair: is that emoji in the top-k images for the text?

    Two baselines split the blame: the same targets queried by their own names (what the image
    side allows), and the description ranked against every name's text embedding, no images
    (what the text side keeps of the paraphrase).
    """
    data = CaptionedImageFolder(folder, resolution=image_size)
    records = _records(Path(folder))
    names = [records[item.file]["name"] for item in data.items]
    missing = sorted({name for _, name in pairs} - set(names))
    if missing:
        raise ConfigError(f"{len(missing)} paraphrase targets are not in {folder}, e.g. "
                          f"{missing[0]!r}", field="paraphrases", fix="use an emoji folder")
    image_emb = embed_images(scorer, _folder_images(data))
    label_names = sorted(set(names))
    name_emb = embed_labels(scorer, label_names, ["{}"])
    description_emb = embed_labels(scorer, [d for d, _ in pairs], ["{}"])

    def top(query_emb: torch.Tensor, keys: torch.Tensor, key_names: list[str]) -> list[list[str]]:
        return [[key_names[i] for i in row.topk(min(k, len(key_names))).indices.tolist()]
                for row in query_emb @ keys.T]

    by_description = top(description_emb, image_emb, names)
    row_of = {name: row for row, name in enumerate(label_names)}
    by_name = top(name_emb[[row_of[name] for _, name in pairs]], image_emb, names)
    by_text = top(description_emb, name_emb, label_names)
    details = [{"description": description, "emoji": name, f"in_top{k}": name in found,
                f"name_in_top{k}": name in by_name[row], f"text_in_top{k}": name in by_text[row],
                "best_match": found[0]}
               for row, ((description, name), found) in enumerate(zip(pairs, by_description))]
    rate = lambda key: sum(d[key] for d in details) / len(pairs)  # noqa: E731
    return {f"top{k}_rate": rate(f"in_top{k}"), f"name_top{k}_rate": rate(f"name_in_top{k}"),
            f"text_top{k}_rate": rate(f"text_in_top{k}"), "pairs": len(pairs), "details": details}


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
