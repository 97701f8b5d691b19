"""Zero-shot classification: rank labels for each image by CLIP similarity (CLIP paper §3.1.2).

Each label becomes one text per template ("an emoji of {}"); with several templates the
unit-norm text embeddings are averaged and re-normalised (the paper's prompt ensembling).
Probabilities are softmax(s · cos(image, label)) with s the model's learned inverse temperature
(`logit_scale()`), or 100 when a scorer does not expose one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..clip.foreign import logit_scale_of
from ..errors import ConfigError
from .embedding import embed_image_files

DEFAULT_TEMPLATE = "{}"


@dataclass(frozen=True)
class LabelScore:
    """One label's probability and cosine similarity for one image."""

    label: str
    probability: float
    similarity: float


@dataclass(frozen=True)
class Classification:
    """The ranked labels of one image (best first, `top_k` of them)."""

    image: str
    ranked: tuple[LabelScore, ...]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"image": self.image, "labels": [
            {"label": s.label, "probability": s.probability, "similarity": s.similarity}
            for s in self.ranked]}


def parse_labels(text: str | list[str]) -> list[str]:
    """Split a comma list (or clean a list) of labels; empty or duplicate labels are errors."""
    items = text.split(",") if isinstance(text, str) else list(text)
    labels = [item.strip() for item in items if item and item.strip()]
    if not labels:
        raise ConfigError("no labels given", field="labels",
                          fix='pass at least one label, e.g. --labels "cat,dog"')
    seen = set()
    for label in labels:
        if label in seen:
            raise ConfigError(f"label {label!r} appears twice", field="labels",
                              fix="list each label once")
        seen.add(label)
    return labels


def check_templates(templates: list[str]) -> list[str]:
    """Each template must contain exactly one `{}` where the label goes."""
    if not templates:
        return [DEFAULT_TEMPLATE]
    for template in templates:
        if template.count("{}") != 1:
            raise ConfigError(f"template {template!r} needs exactly one '{{}}' for the label",
                              field="template", fix='e.g. --template "an emoji of {}"')
    return list(templates)


@torch.no_grad()
def label_embeddings(scorer, labels: list[str], templates: list[str]) -> torch.Tensor:
    """[L, D] unit-norm class embeddings, averaged over templates."""
    texts = [template.format(label) for label in labels for template in templates]
    embedded = scorer.embed_text(texts).float().cpu()  # [L*T, D]
    embedded = embedded.view(len(labels), len(templates), -1).mean(dim=1)
    return F.normalize(embedded, dim=-1)


def rank_labels(image_embeddings: torch.Tensor, class_embeddings: torch.Tensor,
                labels: list[str], logit_scale: float, top_k: int
                ) -> list[tuple[LabelScore, ...]]:
    """Softmax over labels of scaled cosines; the `top_k` best per image, ties by label order."""
    similarity = image_embeddings.float() @ class_embeddings.float().T  # [B, L]
    probabilities = torch.softmax(logit_scale * similarity, dim=-1)
    k = min(top_k, len(labels))
    ranked = []
    for sim_row, prob_row in zip(similarity.tolist(), probabilities.tolist()):
        order = sorted(range(len(labels)), key=lambda j: (-prob_row[j], j))[:k]
        ranked.append(tuple(LabelScore(labels[j], prob_row[j], sim_row[j]) for j in order))
    return ranked


def classify_images(scorer, images: list[str | Path], labels: str | list[str],
                    templates: list[str] | None = None, top_k: int = 5,
                    batch_size: int = 64) -> list[Classification]:
    """Classify image files against `labels`; returns one ranked Classification per image."""
    labels = parse_labels(labels)
    templates = check_templates(list(templates or []))
    if top_k < 1:
        raise ConfigError(f"must be at least 1, got {top_k}", field="top")
    if not images:
        raise ConfigError("no images given", field="images", fix="pass image files")
    image_embeddings = embed_image_files(scorer, images, batch_size=batch_size)
    class_embeddings = label_embeddings(scorer, labels, templates)
    ranked = rank_labels(image_embeddings, class_embeddings, labels, logit_scale_of(scorer),
                         top_k)
    return [Classification(str(path), row) for path, row in zip(images, ranked)]
