"""CaptionedImageFolder: caption sources, validation, strict mode, split, tensors and CLI."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from imagesynth.cli import run
from imagesynth.data.card import split_for
from imagesynth.data.folder import CaptionedImageFolder
from imagesynth.errors import DataError


def _png(path, colour=(200, 30, 30), size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_captions_jsonl_with_corrupt_image_and_missing_caption(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "sub" / "b.png", (0, 0, 255))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _png(tmp_path / "uncaptioned.png")
    records = [{"file": "a.png", "caption": "a  red\nbox", "captions": ["a red box", "red"]},
               {"file": "sub/b.png", "caption": "a blue box"},
               {"file": "broken.png", "caption": "broken"},
               {"file": "gone.png", "caption": "not here"}]
    (tmp_path / "captions.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records) + "\n{oops\n")
    folder = CaptionedImageFolder(tmp_path, val_fraction=0.0)
    report = folder.validate()
    kinds = sorted((p.kind, p.file) for p in report.problems)
    assert kinds == [("bad_caption", "captions.jsonl:5"), ("missing_caption", "uncaptioned.png"),
                     ("missing_file", "gone.png"), ("unreadable", "broken.png")]
    assert report.images_found == 4 and report.usable == 2
    assert [item.caption for item in folder.items] == ["a red box", "a blue box"]
    assert folder.items[0].captions == ("a red box", "red")
    with pytest.raises(DataError) as caught:
        CaptionedImageFolder(tmp_path, strict=True)
    assert "gone.png" in str(caught.value) or "captions.jsonl:5" in str(caught.value)


def test_metadata_csv_and_sidecar_fallback(tmp_path):
    _png(tmp_path / "x.jpg")
    _png(tmp_path / "y.webp")
    (tmp_path / "metadata.csv").write_text('file_name,text\nx.jpg,"a cat, sitting"\n')
    (tmp_path / "y.txt").write_text("a dog\n")
    folder = CaptionedImageFolder(tmp_path)
    assert {i.file: (i.caption, i.source) for i in folder.items} == {
        "x.jpg": ("a cat, sitting", "metadata.csv"), "y.webp": ("a dog", "txt")}
    (tmp_path / "metadata.csv").write_text("path,words\nx.jpg,cat\n")
    with pytest.raises(DataError) as caught:
        CaptionedImageFolder(tmp_path)
    assert caught.value.field == "metadata.csv"


def test_oversized_images_are_reported_and_strict_validation_raises(tmp_path):
    _png(tmp_path / "big.png", size=(300, 300))
    _png(tmp_path / "small.png", size=(10, 10))
    for name in ("big", "small"):
        (tmp_path / f"{name}.txt").write_text(name)
    report = CaptionedImageFolder(tmp_path, max_pixels=200 * 200).validate()
    assert [(p.kind, p.file) for p in report.problems] == [("oversized", "big.png")]
    assert report.usable == 1
    with pytest.raises(DataError):
        CaptionedImageFolder(tmp_path, max_pixels=200 * 200, strict=True).validate()


def test_split_is_deterministic_and_stable_when_files_are_added(tmp_path):
    for index in range(60):
        _png(tmp_path / f"{index:03d}.png")
        (tmp_path / f"{index:03d}.txt").write_text(f"image {index}")
    before = {i.file: i.split for i in CaptionedImageFolder(tmp_path, val_fraction=0.2).items}
    for index in range(60, 90):
        _png(tmp_path / f"{index:03d}.png")
        (tmp_path / f"{index:03d}.txt").write_text(f"image {index}")
    after = {i.file: i.split for i in CaptionedImageFolder(tmp_path, val_fraction=0.2).items}
    assert all(after[file] == split for file, split in before.items())
    assert 0 < sum(s == "val" for s in after.values()) < 90
    assert split_for("000.png", 0.2) == before["000.png"]
    val = CaptionedImageFolder(tmp_path, val_fraction=0.2, split="val")
    assert len(val) == sum(s == "val" for s in after.values())


def test_items_are_tensors_in_minus_one_to_one_at_the_requested_resolution(tmp_path):
    _png(tmp_path / "wide.png", colour=(255, 0, 128), size=(40, 20))
    (tmp_path / "wide.txt").write_text("pink")
    folder = CaptionedImageFolder(tmp_path, resolution=16)
    item = folder[0]
    assert item["caption"] == "pink" and item["file"] == "wide.png"
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert torch.allclose(item["image"][:, 8, 8], torch.tensor([1.0, -1.0, 128 / 127.5 - 1]),
                          atol=1e-6)


def test_cli_folder_reports_problems_and_writes_outputs(tmp_path, capsys):
    source = tmp_path / "photos"
    _png(source / "ok.png")
    (source / "ok.txt").write_text("fine")
    _png(source / "nocap.png")
    code = run(["data", "folder", str(source), "--out", str(tmp_path / "report.json"),
                "--captions-out", str(tmp_path / "captions.jsonl")])
    assert code == 0
    assert "missing_caption" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["usable"] == 1 and report["problem_counts"] == {"missing_caption": 1}
    line = json.loads((tmp_path / "captions.jsonl").read_text())
    assert line["file"] == "ok.png" and line["caption"] == "fine"
    assert run(["data", "folder", str(source), "--strict"]) == 2
    assert "nocap.png" in capsys.readouterr().err
    assert run(["data", "folder", str(tmp_path / "absent")]) == 2
