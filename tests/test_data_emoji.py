"""Emoji builder, offline on a small fake npm tarball; one test really runs npm."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile

import pytest
from PIL import Image

from imagesynth.cli import run
from imagesynth.data import emoji as emoji_module
from imagesynth.data.emoji import EmojiConfig, build_emoji_dataset, fetch_package
from imagesynth.errors import ConfigError, DataError, ExternalToolError

ENTRIES = [
    {"name": "GRINNING FACE", "unified": "1F600", "image": "1f600.png", "short_names": ["grinning"],
     "category": "Smileys & Emotion", "subcategory": "face-smiling", "sort_order": 1,
     "has_img_twitter": True, "has_img_google": True},
    {"name": "WAVING HAND SIGN", "unified": "1F44B", "image": "1f44b.png",
     "short_names": ["wave"], "category": "People & Body", "subcategory": "hand-fingers-open",
     "sort_order": 2, "has_img_twitter": True, "has_img_google": True,
     "skin_variations": {"1F3FB": {"unified": "1F44B-1F3FB", "image": "1f44b-1f3fb.png",
                                   "has_img_twitter": True, "has_img_google": True}}},
    {"name": "GOOGLE ONLY", "unified": "1F999", "image": "1f999.png", "short_names": ["gonly"],
     "category": "Symbols", "subcategory": "other", "sort_order": 3,
     "has_img_twitter": False, "has_img_google": True},
]


def _png_bytes() -> bytes:
    # left half opaque red, right half fully transparent: shows the background compositing
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 32, 64))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _fake_tarball(path, style, extra_members=()):
    with tarfile.open(path, "w:gz") as archive:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        add("package/emoji.json", json.dumps(ENTRIES).encode())
        add("package/LICENSE", b"MIT")
        for image in ("1f600.png", "1f44b.png", "1f44b-1f3fb.png", "1f999.png"):
            if style == "twitter" and image == "1f999.png":
                continue
            add(f"package/img/{style}/64/{image}", _png_bytes())
        add(f"package/img/{style}/32/ignored.png", _png_bytes())
        for name, data in extra_members:
            add(name, data)


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """Point the cache at tmp_path and replace `npm pack` by copying a fake tarball."""
    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path / "home"))
    calls = []

    def fake_pack(package, destination):
        calls.append(package)
        style = package.rsplit("-", 1)[-1]
        tarball = destination / f"{package}-16.0.0.tgz"
        _fake_tarball(tarball, style)
        return tarball

    monkeypatch.setattr(emoji_module, "npm_pack", fake_pack)
    return calls


def test_builds_captioned_set_with_licences(tmp_path, fake_npm):
    summary = build_emoji_dataset(tmp_path / "emoji", EmojiConfig(size=32, background="#0000ff"))
    assert summary.details["per_style"] == {"twitter": 2, "google": 3}
    records = [json.loads(line) for line in
               (tmp_path / "emoji" / "captions.jsonl").read_text().splitlines()]
    first = records[0]
    assert first["caption"] == "grinning face, twitter style"
    assert "grinning, twitter style" in first["captions"]
    assert any("smileys & emotion" in c for c in first["captions"])
    assert (first["style"], first["unified"], first["category"]) == \
        ("twitter", "1F600", "Smileys & Emotion")
    image = Image.open(tmp_path / "emoji" / first["file"])
    assert image.size == (32, 32) and image.mode == "RGB"
    assert image.getpixel((4, 16)) == (255, 0, 0) and image.getpixel((28, 16)) == (0, 0, 255)
    card = (tmp_path / "emoji" / "DATASET.md").read_text()
    assert "CC-BY 4.0" in card and "Apache" in card and "emoji-datasource-google@16.0.0" in card
    assert not any(r["skin_tone"] for r in records)


def test_skin_tones_and_cache_reuse(tmp_path, fake_npm):
    build_emoji_dataset(tmp_path / "a", EmojiConfig(styles=("twitter",)))
    summary = build_emoji_dataset(tmp_path / "a", EmojiConfig(styles=("twitter",),
                                                              skin_tones=True))
    assert fake_npm == ["emoji-datasource-twitter"]  # the second build used the cache
    assert summary.count == 3
    records = [json.loads(line) for line in
               (tmp_path / "a" / "captions.jsonl").read_text().splitlines()]
    toned = [r for r in records if r["skin_tone"]]
    assert toned[0]["caption"] == "waving hand sign, light skin tone, twitter style"


def test_unsafe_tarball_member_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path / "home"))

    def evil_pack(package, destination):
        tarball = destination / f"{package}-1.0.0.tgz"
        _fake_tarball(tarball, "twitter",
                      [("package/img/twitter/64/../../../../../escaped.png", b"x")])
        return tarball

    monkeypatch.setattr(emoji_module, "npm_pack", evil_pack)
    with pytest.raises(DataError):
        fetch_package("twitter")
    assert not list(tmp_path.rglob("escaped.png"))


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ExternalToolError) as caught:
        fetch_package("google")
    assert "npm" in caught.value.fix
    assert run(["data", "emoji", "--out", str(tmp_path / "e")]) == 1
    assert "npm" in capsys.readouterr().err


def test_bad_options_are_config_errors(tmp_path, fake_npm, capsys):
    with pytest.raises(ConfigError):
        EmojiConfig(styles=("apple",))
    with pytest.raises(ConfigError):
        EmojiConfig(background="not-a-colour")
    assert run(["data", "emoji", "--out", str(tmp_path / "e"), "--styles", "twitter",
                "--size", "16"]) == 0
    assert "written to" in capsys.readouterr().out


def _npm_registry_reachable() -> bool:
    if shutil.which("npm") is None:
        return False
    try:
        return subprocess.run(["npm", "ping"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.network
@pytest.mark.slow
def test_real_npm_pack_of_twitter_package(tmp_path, monkeypatch):
    if not _npm_registry_reachable():
        pytest.skip("npm or the npm registry is not available")
    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path / "home"))
    package = fetch_package("twitter")
    entries = emoji_module.emoji_entries(package)
    assert len(entries) > 1800
    assert (package.root / "img" / "twitter" / "64" / entries[0]["image"]).is_file()
