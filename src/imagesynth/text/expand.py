"""Prompt expansion (`generate --expand`): rewrite a typed prompt as the caption a model knows best.

A text-to-image model reads only the token states it saw in training, so a word outside its
captions ("violet", "disc") or an order it never saw is noise to it even when the text encoder
places the words near known ones. The expander uses only the model's own text encoder and its
training captions (`captions.txt` in the model folder), nothing learned from a test list:

1. **candidates**: the training captions, plus the captions made by swapping one word for
   another of its closed class. Classes are read off the captions themselves: two words are in
   one class when they fill the same slot of at least `MIN_SHARED_CONTEXTS` captions (so
   "purple" and "red" are, and "a purple triangle" becomes a candidate though training held that
   pair out). Classes larger than `MAX_CLASS` (open nouns) are not swapped.
2. **retrieval**: the candidate with the highest BERTScore F1 (Zhang et al. 2020) against the
   typed prompt, computed on the encoder's token states: each token is matched to its most
   similar token on the other side, so synonyms score by meaning, word order does not matter,
   and extra words ("just", "picture of") cost only a little precision.

Deterministic (the encoder runs on fixed inputs); the pipeline records the typed and the
expanded prompt in every image's recipe, so `reproduce` regenerates from the expanded one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError

CAPTIONS_FILE = "captions.txt"
#: two words are one class when they fill the same slot in this many captions
MIN_SHARED_CONTEXTS = 2
#: only classes up to this size are swapped to make new candidates (colours, shapes, sides)
MAX_CLASS = 16


@dataclass(frozen=True)
class Expansion:
    """A typed prompt, the caption the model is given instead, and how well it matched."""

    typed: str
    expanded: str
    #: BERTScore F1 of the expanded caption against the typed prompt (1.0 = the same tokens)
    score: float
    #: True when the caption came from a class swap rather than the training captions
    recombined: bool = False

    def to_dict(self) -> dict:
        """JSON form for recipes."""
        return {"typed": self.typed, "expanded": self.expanded, "score": self.score,
                "recombined": self.recombined}


def read_captions(model_dir: str | Path) -> list[str] | None:
    """The distinct training captions a model folder carries, or None."""
    path = Path(model_dir) / CAPTIONS_FILE
    if not path.is_file():
        return None
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def captions_text(captions) -> str:
    """The `captions.txt` form: the distinct captions, sorted, one per line."""
    return "\n".join(sorted({c.strip() for c in captions if c and c.strip()})) + "\n"


def write_captions(model_dir: str | Path, captions) -> Path:
    """Store the distinct training captions beside a model's weights."""
    path = Path(model_dir) / CAPTIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(captions_text(captions), encoding="utf-8")
    return path


def word_classes(captions: list[str]) -> dict[str, frozenset[str]]:
    """{word: its class}: words that fill one slot (same words around it) in enough captions."""
    fillers: dict[tuple, set[str]] = defaultdict(set)
    for caption in captions:
        words = caption.split()
        for i, word in enumerate(words):
            fillers[(tuple(words[:i]), tuple(words[i + 1:]))].add(word)
    shared: dict[tuple[str, str], int] = defaultdict(int)
    for group in fillers.values():
        for a in group:
            for b in group:
                if a < b:
                    shared[(a, b)] += 1
    parent: dict[str, str] = {}

    def root(word: str) -> str:
        while parent.setdefault(word, word) != word:
            word = parent[word]
        return word

    for (a, b), count in sorted(shared.items()):
        if count >= MIN_SHARED_CONTEXTS:
            parent[root(a)] = root(b)
    members: dict[str, set[str]] = defaultdict(set)
    for word in {w for c in captions for w in c.split()}:
        members[root(word)].add(word)
    return {word: frozenset(group) for group in members.values() for word in group}


def recombine(captions: list[str], classes: dict[str, frozenset[str]]) -> list[str]:
    """New captions from swapping one word of a caption for another of its closed class."""
    known, new = set(captions), set()
    for caption in captions:
        words = caption.split()
        for i, word in enumerate(words):
            group = classes.get(word, frozenset())
            if 1 < len(group) <= MAX_CLASS:
                for other in group - {word}:
                    candidate = " ".join(words[:i] + [other] + words[i + 1:])
                    if candidate not in known:
                        new.add(candidate)
    return sorted(new)


class PromptExpander:
    """Rewrites prompts as the nearest caption of a model, by BERTScore on its encoder's states."""

    def __init__(self, encoder, captions: list[str], *, recombined: bool = True,
                 scoring: str = "bertscore"):
        if scoring not in ("bertscore", "pooled"):
            raise ConfigError(f"unknown scoring {scoring!r}", field="scoring",
                              fix="use bertscore (token matching) or pooled (sentence cosine)")
        if not captions:
            raise ConfigError("the model has no training captions to expand prompts with",
                              field="expand", fix=f"train it with imagesynth (which writes "
                                                  f"{CAPTIONS_FILE}) or leave out --expand")
        self.encoder, self.scoring = encoder, scoring
        self.captions = sorted(set(captions))
        self.recombined = recombine(self.captions, word_classes(self.captions)) if recombined \
            else []
        self.candidates = self.captions + self.recombined
        self._states: torch.Tensor | None = None  # [N, T, D] unit token states, 0 past the end
        self._mask: torch.Tensor | None = None

    def _batches(self, texts: list[str]):
        """The encoder's outputs for `texts`, 256 at a time."""
        for start in range(0, len(texts), 256):
            with torch.no_grad():
                yield self.encoder(texts[start:start + 256])

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-length token states [N, T, D] without the special tokens, and their mask [N, T]."""
        states, masks = [], []
        for encoding in self._batches(texts):
            lengths = encoding.mask.bool().sum(1)
            width = int(lengths.max())  # drop the padding every text of the batch has
            mask = encoding.mask.bool()[:, :width].clone()
            mask[:, 0] = False  # [CLS]
            mask[torch.arange(len(mask)), lengths - 1] = False  # [SEP]
            states.append(torch.nn.functional.normalize(
                encoding.states[:, :width].float(), dim=-1))
            masks.append(mask)
        width = max(s.shape[1] for s in states)
        pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1]))  # noqa: E731
        return (torch.cat([pad(s) for s in states]),
                torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]))

    def scores(self, prompt: str) -> torch.Tensor:
        """BERTScore F1 (or, with scoring="pooled", sentence cosine) of every candidate [N]."""
        if self.scoring == "pooled":
            return self._pooled_scores(prompt)
        if self._states is None:
            self._states, self._mask = self._encode(self.candidates)
        typed, typed_mask = self._encode([prompt])
        typed = typed[0, typed_mask[0]]  # [t, D]
        if len(typed) == 0:
            raise ConfigError("the prompt has no words", field="prompt",
                              fix='describe the image, e.g. "a red circle"')
        similarity = torch.einsum("ntd,sd->nts", self._states, typed)  # [N, T, t]
        similarity = similarity.masked_fill(~self._mask[:, :, None], -2.0)
        recall = (similarity.max(2).values * self._mask).sum(1) / self._mask.sum(1)
        precision = similarity.max(1).values.mean(1)
        return 2 * precision * recall / (precision + recall)

    def _pooled_scores(self, prompt: str) -> torch.Tensor:
        """Cosine of the encoder's pooled sentence vectors (the ablation of BERTScore)."""
        def pooled(texts):
            vectors = torch.cat([encoding.pooled.float() for encoding in self._batches(texts)])
            return torch.nn.functional.normalize(vectors, dim=-1)

        if self._states is None:
            self._states = pooled(self.candidates)
        return self._states @ pooled([prompt])[0]

    def __call__(self, prompt: str) -> Expansion:
        """The expansion of one prompt (the typed prompt itself when it is a training caption)."""
        if prompt.strip() in self.captions:
            return Expansion(prompt, prompt.strip(), 1.0)
        scores = self.scores(prompt)
        best = int(scores.argmax())  # the first of equal scores: candidates are in fixed order
        return Expansion(prompt, self.candidates[best], round(float(scores[best]), 4),
                         recombined=best >= len(self.captions))
