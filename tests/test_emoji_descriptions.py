"""Emoji descriptions in held-out words: keyword merging, the held-out filter, npm extraction."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from imagesynth.data import emoji_descriptions as descriptions
from imagesynth.errors import DataError

CLDR = [{"hexcode": "1F34E", "label": "red apple",
         "tags": ["apple", "diet", "food", "fruit", "health", "red", "ripe"]},
        {"hexcode": "2764", "label": "red heart", "tags": ["heart"]}]
EMOJILIB = {"🍎": ["red_apple", "fruit", "mac", "school", ":)"],
            "❤️": ["red_heart", "love", "valentines_day", "romance"]}
CAPTIONS = ["red apple, twitter style", "apple, google style", "love letter, twitter style",
            "a twitter style emoji of red apple, food & drink", "heart, twitter style"]


def test_keyword_table_merges_cldr_first_and_drops_emojilibs_name():
    table = descriptions.keyword_table(CLDR, EMOJILIB)
    assert table["1F34E"] == ["apple", "diet", "food", "fruit", "health", "red", "ripe", "mac",
                              "school", ":)"]
    assert "red apple" not in table["1F34E"] and "red_apple" not in table["1F34E"]
    # emojilib keys are characters: the heart's variation selector makes it "2764-FE0F"
    assert table["2764-FE0F"] == ["love", "valentines day", "romance"]


def test_held_out_keywords_share_no_word_with_the_captions():
    vocabulary = descriptions.caption_vocabulary(CAPTIONS)
    assert {"red", "apple", "food", "twitter", "love"} <= vocabulary
    held = descriptions.held_out_keywords(
        ["apple", "diet", "food", "ripe", ":)", "love song", "valentines day", "2030"], vocabulary)
    assert held == ["diet", "ripe", "valentines day"]  # no caption word, letters only


def test_describe_is_deterministic_order_free_and_needs_two_words():
    vocabulary = descriptions.caption_vocabulary(CAPTIONS)
    table = descriptions.keyword_table(CLDR, EMOJILIB)
    described = descriptions.describe("1F34E", table, vocabulary)
    assert described is not None and len(described.keywords) == descriptions.MAX_KEYWORDS
    assert set(described.keywords) <= {"diet", "fruit", "health", "ripe", "mac", "school"}
    head, last = described.description.rsplit(" and ", 1)
    assert head.split(", ") + [last] == list(described.keywords)
    shuffled = {"1F34E": list(reversed(table["1F34E"]))}
    assert descriptions.describe("1F34E", shuffled, vocabulary) == described
    # the heart keeps "valentines day" and "romance" once "love" is a caption word: enough;
    # with "romance" in the captions too, one word is left: no description
    assert descriptions.describe("2764-FE0F", table, vocabulary).keywords
    assert descriptions.describe("2764-FE0F", table, vocabulary | {"romance"}) is None
    assert descriptions.describe("2764", table, vocabulary) is None  # only CLDR's "heart"
    assert descriptions.check_held_out([described], CAPTIONS) == []
    assert descriptions.check_held_out([described], CAPTIONS + [" ".join(described.keywords)]) \
        == sorted({w for k in described.keywords for w in k.split()})


def _tarball(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_keyword_files_come_from_pinned_npm_tarballs(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path / "home"))
    packed = []

    def fake_pack(spec, destination):
        packed.append(spec)
        name, version = spec.rsplit("@", 1)
        member = descriptions.KEYWORD_PACKAGES[name][1]
        data = json.dumps(CLDR if name == "emojibase-data" else EMOJILIB).encode()
        path = destination / f"{name}-{version}.tgz"
        _tarball(path, {member: data, "package/README.md": b"not extracted"})
        return path

    monkeypatch.setattr(descriptions, "npm_pack", fake_pack)
    assert descriptions.load_keyword_table() == descriptions.keyword_table(CLDR, EMOJILIB)
    assert packed == ["emojibase-data@17.0.0", "emojilib@4.0.3"]
    descriptions.load_keyword_table()  # cached: no second npm call
    assert len(packed) == 2
    assert set(descriptions.package_hashes()) == {"emojibase-data@17.0.0", "emojilib@4.0.3"}


def test_a_tarball_without_the_keyword_file_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path / "home"))

    def wrong_pack(spec, destination):
        name, version = spec.rsplit("@", 1)
        path = destination / f"{name}-{version}.tgz"
        _tarball(path, {"package/other.json": b"{}"})
        return path

    monkeypatch.setattr(descriptions, "npm_pack", wrong_pack)
    with pytest.raises(DataError) as error:
        descriptions.fetch_keyword_file("emojilib")
    assert error.value.field == "tarball" and "delete" in str(error.value.fix)
