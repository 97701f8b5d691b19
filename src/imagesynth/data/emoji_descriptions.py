"""Emoji described in words their model never saw: the paraphrase set of the emoji benchmark.

A person who cannot recall an emoji's name describes it ("fruit, ripe and diet"). The words come
from two keyword lists made by other people for search, never from our captions or test
results: the Unicode CLDR annotations (`emojibase-data`, MIT) and `emojilib`'s keywords (MIT),
both fetched once from npm at pinned versions. The procedure, per emoji:

1. its keywords: the CLDR tags, then emojilib's (its first entry, the name, is dropped);
2. held out: keep only keywords of letters whose every word is absent from all of the model's
   training captions (`captions.txt`), so the description shares no word with training;
3. at least `MIN_KEYWORDS` must remain (otherwise the emoji has no description); the first
   `MAX_KEYWORDS` by SHA-256 of (emoji, keyword) are joined as "a, b and c" (a hash order, not
   CLDR's alphabetical one, so no letter of the alphabet is favoured).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..io.files import sha256_file
from ..paths import cache_dir
from .emoji import npm_pack

#: npm package -> (pinned version, the one file of it that is read)
KEYWORD_PACKAGES = {"emojibase-data": ("17.0.0", "package/en/data.json"),
                    "emojilib": ("4.0.3", "package/dist/emoji-en-US.json")}
MIN_KEYWORDS = 2
MAX_KEYWORDS = 3
_WORD = re.compile(r"[a-z0-9']+")
_KEYWORD = re.compile(r"[a-z][a-z' -]*[a-z]")


@dataclass(frozen=True)
class EmojiDescription:
    """One emoji's description, the keywords it joins, and where they came from."""

    unified: str
    description: str
    keywords: tuple[str, ...]


def fetch_keyword_file(package: str) -> Path:
    """The pinned package's keyword file, from the npm cache (packed and extracted once)."""
    version, member = KEYWORD_PACKAGES[package]
    folder = cache_dir("npm")
    tarball = folder / f"{package}-{version}.tgz"
    if not tarball.is_file():
        tarball = npm_pack(f"{package}@{version}", folder)
    root = folder / f"{package}-{version}"
    path = root / member
    if not path.is_file():
        shutil.rmtree(root, ignore_errors=True)
        try:
            with tarfile.open(tarball, "r:gz") as archive:
                archive.extractall(root, members=[archive.getmember(member)], filter="data")
        except (tarfile.TarError, OSError, EOFError, KeyError) as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise DataError(f"{tarball} has no readable {member} ({exc})", field="tarball",
                            fix=f"delete {tarball} and run the command again") from None
    return path


def package_hashes() -> dict[str, str]:
    """{package@version: tarball SHA-256} of the keyword sources, for benchmark records."""
    folder = cache_dir("npm")
    return {f"{name}@{version}": sha256_file(folder / f"{name}-{version}.tgz")
            for name, (version, _) in KEYWORD_PACKAGES.items()
            if (folder / f"{name}-{version}.tgz").is_file()}


def _character(unified: str) -> str:
    """The emoji's characters from its code points ("1F34E" -> the red apple)."""
    return "".join(chr(int(point, 16)) for point in unified.split("-"))


def keyword_table(cldr: list[dict], emojilib: dict[str, list[str]]) -> dict[str, list[str]]:
    """{UNIFIED (upper-case code points): keywords}, CLDR tags first, emojilib's after, no repeats."""
    table: dict[str, list[str]] = {}
    for entry in cldr:
        table.setdefault(entry["hexcode"].upper(), []).extend(entry.get("tags", []))
    for character, words in emojilib.items():
        unified = "-".join(f"{ord(c):X}" for c in character)
        table.setdefault(unified, []).extend(w.replace("_", " ") for w in words[1:])
    return {key: list(dict.fromkeys(k.lower() for k in words)) for key, words in table.items()}


def load_keyword_table() -> dict[str, list[str]]:
    """The keyword table of the pinned CLDR and emojilib packages."""
    cldr = json.loads(fetch_keyword_file("emojibase-data").read_text(encoding="utf-8"))
    emojilib = json.loads(fetch_keyword_file("emojilib").read_text(encoding="utf-8"))
    return keyword_table(cldr, emojilib)


def caption_vocabulary(captions) -> set[str]:
    """Every word (lower case) of the captions."""
    return {word for caption in captions for word in _WORD.findall(caption.lower())}


def held_out_keywords(keywords: list[str], vocabulary: set[str]) -> list[str]:
    """The keywords made of letters that share no word with `vocabulary`."""
    return [k for k in keywords if _KEYWORD.fullmatch(k)
            and not any(word in vocabulary for word in _WORD.findall(k))]


def _keywords_for(table: dict[str, list[str]], unified: str) -> list[str]:
    """An emoji's keywords; without its variation selector when only that form is listed."""
    return table.get(unified.upper()) or table.get(unified.upper().replace("-FE0F", ""), [])


def describe(unified: str, table: dict[str, list[str]],
             vocabulary: set[str]) -> EmojiDescription | None:
    """The emoji's description in held-out words, or None when it has too few of them."""
    held = held_out_keywords(_keywords_for(table, unified), vocabulary)
    if len(held) < MIN_KEYWORDS:
        return None
    order = lambda k: hashlib.sha256(f"{unified}:{k}".encode()).hexdigest()  # noqa: E731
    chosen = tuple(sorted(held, key=order)[:MAX_KEYWORDS])
    text = ", ".join(chosen[:-1]) + f" and {chosen[-1]}"
    return EmojiDescription(unified=unified, description=text, keywords=chosen)


def check_held_out(descriptions: list[EmojiDescription], captions) -> list[str]:
    """The description words that occur in the captions (empty when the set is held out)."""
    vocabulary = caption_vocabulary(captions)
    return sorted({word for d in descriptions for k in d.keywords
                   for word in _WORD.findall(k) if word in vocabulary})
