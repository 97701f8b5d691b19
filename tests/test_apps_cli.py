"""`imagesynth classify | index | search | score` end to end with a tiny CLIP model folder."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from imagesynth.cli import run
from imagesynth.config import to_dict
from imagesynth.nets.clip import CLIPConfig, CLIPModel
from imagesynth.registry import write_model_folder

TINY = CLIPConfig(image_size=16, widths=(8, 16), blocks_per_stage=1, embed_dim=32,
                  text_hidden=64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A seeded random tiny imagesynth CLIP saved as a model folder."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(TINY)
    folder = tmp_path_factory.mktemp("models") / "tiny-clip"
    write_model_folder(folder, model.state_dict(), {"family": "clip", "clip": to_dict(TINY)},
                       "# tiny test CLIP\n")
    return folder


@pytest.fixture(autouse=True)
def shared_text_encoder(monkeypatch, minilm, tmp_path):
    """Reuse the session's MiniLM instead of reloading it per command; no bundled models."""
    monkeypatch.setattr("imagesynth.clip.scorer.load_text_encoder", lambda spec: minilm)
    monkeypatch.setenv("IMAGESYNTH_MODELS", str(tmp_path / "no-bundled-models"))


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "pictures"
    (folder / "sub").mkdir(parents=True)
    colours = [(230, 20, 20), (20, 200, 40), (30, 40, 220), (240, 220, 30)]
    paths = []
    for i, rgb in enumerate(colours):
        path = folder / ("sub" if i % 2 else "") / f"colour_{i}.png"
        Image.new("RGB", (20 + i, 16), rgb).save(path)
        paths.append(path)
    return folder, paths


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_classify_prints_ranked_labels_as_json_and_table(model_dir, images, capsys):
    _, paths = images
    code = run(["classify", str(paths[0]), str(paths[1]), "--labels", "red,green,blue",
                "--template", "a {} square", "--template", "{}", "--model", str(model_dir),
                "--top", "2", "--json"])
    assert code == 0
    report = _json(capsys)
    assert report["templates"] == ["a {} square", "{}"]
    assert [r["image"] for r in report["results"]] == [str(paths[0]), str(paths[1])]
    for result in report["results"]:
        probabilities = [label["probability"] for label in result["labels"]]
        assert len(probabilities) == 2 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
    assert run(["classify", str(paths[0]), "--labels", "red,green",
                "--model", str(model_dir)]) == 0
    assert "probability" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--labels", " , "], "labels: no labels given"),
    (["--labels", "a,b", "--model", "no-such-model"], "no model named 'no-such-model'"),
    (["--labels", "a,b"], "pass --model"),
    (["--labels", "a,b", "--template", "no slot"], "template"),
])
def test_classify_bad_input_is_one_line_error(model_dir, images, capsys, args, message):
    _, paths = images
    if "--model" not in args and message != "pass --model":
        args = [*args, "--model", str(model_dir)]
    assert run(["classify", str(paths[0]), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_index_then_search_by_text_and_image(model_dir, images, tmp_path, capsys):
    folder, paths = images
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    index = tmp_path / "index.sqlite"
    assert run(["index", str(folder), "--index", str(index), "--model", str(model_dir),
                "--json"]) == 0
    report = _json(capsys)
    assert (report["added"], report["duplicates"], report["images"]) == (4, 0, 4)
    assert [u["path"].endswith("broken.png") for u in report["unreadable"]] == [True]
    # the second run has nothing new; the table form reports the counts in words
    assert run(["index", str(folder), "--index", str(index)]) == 0
    out = capsys.readouterr().out
    assert "added 0" in out and "unchanged 4" in out and "unreadable skipped 1" in out
    html = tmp_path / "sheet" / "results.html"
    assert run(["search", "a red square", "--index", str(index), "--top", "3", "--json",
                "--html", str(html)]) == 0
    hits = _json(capsys)["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert html.read_text().count("<img ") == 3
    assert run(["search", "--image", str(paths[2]), "--index", str(index), "--json"]) == 0
    best = _json(capsys)["results"][0]
    assert best["path"] == str(paths[2].resolve()) and best["score"] == pytest.approx(1, 1e-5)
    assert run(["search", "yellow", "--index", str(index)]) == 0
    table = capsys.readouterr().out
    assert "search: yellow" in table and all(
        re.search(rf"│\s+{rank} │", table) for rank in range(1, 5))


def test_search_bad_input_is_one_line_error(model_dir, images, tmp_path, capsys):
    folder, _ = images
    index = tmp_path / "index.sqlite"
    assert run(["search", "cat", "--index", str(index)]) == 2
    assert "imagesynth index" in capsys.readouterr().err
    assert run(["index", str(folder), "--index", str(index), "--model", str(model_dir)]) == 0
    capsys.readouterr()
    not_image = tmp_path / "query.png"
    not_image.write_text("hello")
    assert run(["search", "--image", str(not_image), "--index", str(index)]) == 2
    err = capsys.readouterr().err
    assert "query.png" in err and len(err.strip().splitlines()) == 1
    assert run(["search", "cat", "--image", str(not_image), "--index", str(index)]) == 2
    assert "not both" in capsys.readouterr().err


def test_score_reports_both_clip_score_conventions(model_dir, images, capsys):
    from imagesynth.apps import load_scorer
    from imagesynth.apps.embedding import embed_image_files

    _, paths = images
    assert run(["score", *map(str, paths), "--prompt", "a red square",
                "--model", str(model_dir), "--json"]) == 0
    report = _json(capsys)
    scorer = load_scorer(str(model_dir))
    cosines = (embed_image_files(scorer, paths) @ scorer.embed_text(["a red square"]).T)[:, 0]
    cosines = cosines.numpy().astype(np.float64)
    assert [r["clip_score_hessel"] for r in report["images"]] == \
        pytest.approx((2.5 * np.clip(cosines, 0, None)).tolist(), abs=1e-5)
    assert report["clip_score_hessel"] == pytest.approx(2.5 * np.clip(cosines, 0, None).mean(),
                                                        abs=1e-5)
    assert report["clip_score_torchmetrics"] == pytest.approx(max(100 * cosines.mean(), 0),
                                                              abs=1e-3)
    assert run(["score", str(paths[0]), "--prompt", "  ", "--model", str(model_dir)]) == 2
    assert "prompt" in capsys.readouterr().err
