"""Search index: persistence, incremental updates, model identity, concurrency, faiss parity."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from imagesynth.apps import SearchIndex, write_contact_sheet
from imagesynth.apps.search_index import FAISS_MIN_ROWS
from imagesynth.clip import CLIPScorer
from imagesynth.errors import ConfigError, DataError, InputImageError, MissingFileError
from imagesynth.nets.clip import CLIPConfig, CLIPModel

TINY = CLIPConfig(image_size=16, widths=(8, 16), blocks_per_stage=1, embed_dim=32,
                  text_hidden=64)


def tiny_scorer(text_encoder, seed: int = 0, name: str = "tiny") -> CLIPScorer:
    """A randomly initialised, seeded tiny CLIP (weights fixed by `seed`)."""
    generator = torch.Generator().manual_seed(seed)
    model = CLIPModel(TINY)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return CLIPScorer(model, text_encoder, name=name)


def write_images(folder, count: int, seed: int = 0, start: int = 0) -> list:
    """`count` distinct random 16x16 PNGs (blocky colours, so embeddings differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(start, start + count):
        blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        pixels = np.kron(blocks, np.ones((4, 4, 1), dtype=np.uint8))
        path = folder / f"img_{i:05d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def scorer(minilm):
    return tiny_scorer(minilm)


@pytest.fixture(scope="module")
def big_index(tmp_path_factory, scorer):
    """2,000 images indexed once; the tests below only read it or copy it."""
    root = tmp_path_factory.mktemp("search")
    write_images(root / "images", 2000)
    with SearchIndex(root / "index.sqlite", create=True) as index:
        report = index.update(root / "images", scorer, "tiny", batch_size=256)
    return root, report


def _as_tuples(results):
    return [(r.rank, r.path, r.score, r.sha256) for r in results]


def test_two_thousand_images_survive_reopen_with_identical_results(big_index, scorer):
    root, report = big_index
    assert (report.added, report.duplicates, report.pruned, report.unreadable) == \
        (2000, 0, 0, [])
    query_image = root / "images" / "img_00123.png"
    with SearchIndex(root / "index.sqlite") as index:
        by_image = index.search_image(scorer, query_image, top_k=10)
        by_text = index.search_text(scorer, "a red square", top_k=10)
        assert index.stats()["images"] == 2000
    # the query image itself is the best match (cosine 1)
    assert by_image[0].path == str(query_image.resolve())
    assert by_image[0].score == pytest.approx(1.0, abs=1e-5)
    assert [r.rank for r in by_text] == list(range(1, 11))
    assert all(a.score >= b.score for a, b in zip(by_text, by_text[1:]))
    with SearchIndex(root / "index.sqlite") as reopened:
        assert _as_tuples(reopened.search_image(scorer, query_image, 10)) == _as_tuples(by_image)
        assert _as_tuples(reopened.search_text(scorer, "a red square", 10)) == \
            _as_tuples(by_text)


def test_search_matches_brute_force_over_stored_vectors(big_index, scorer):
    root, _ = big_index
    query = scorer.embed_text(["a green circle"])[0].numpy()
    with SearchIndex(root / "index.sqlite") as index:
        results = index.search_vector(query, top_k=25)
    rows = sqlite3.connect(root / "index.sqlite").execute(
        "SELECT path, vector FROM images").fetchall()
    vectors = np.stack([np.frombuffer(v, dtype="<f4") for _, v in rows]).astype(np.float64)
    scores = vectors @ query.astype(np.float64)
    expected = [rows[i][0] for i in np.argsort(-scores, kind="stable")[:25]]
    assert [r.path for r in results] == expected
    assert [r.score for r in results] == pytest.approx(np.sort(scores)[::-1][:25].tolist())


def test_incremental_update_skips_duplicates_prunes_and_reports_corrupt(tmp_path, scorer):
    folder = tmp_path / "images"
    paths = write_images(folder, 12)
    index = SearchIndex(tmp_path / "index.sqlite", create=True)
    first = index.update(folder, scorer, "tiny")
    assert (first.added, first.unchanged, first.duplicates) == (12, 0, 0)
    shutil.copy(paths[0], folder / "copy_of_0.png")  # same content, other path
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.txt").write_text("not an image: ignored")
    paths[1].unlink()
    write_images(folder, 2, seed=7, start=100)
    second = index.update(folder, scorer, "tiny")
    assert (second.added, second.unchanged, second.duplicates, second.pruned) == (2, 11, 1, 1)
    assert [os.path.basename(p) for p, _ in second.unreadable] == ["broken.png"]
    assert index.stats()["images"] == 13
    # a third run re-reads nothing that is unchanged and still reports the duplicate
    third = index.update(folder, scorer, "tiny")
    assert (third.added, third.unchanged, third.duplicates, third.pruned) == (0, 13, 1, 0)
    # removing the original promotes its copy to an indexed image
    paths[0].unlink()
    fourth = index.update(folder, scorer, "tiny")
    assert (fourth.added, fourth.duplicates, fourth.pruned) == (1, 0, 1)
    hits = index.search_image(scorer, folder / "copy_of_0.png", top_k=1)
    assert hits[0].path == str((folder / "copy_of_0.png").resolve())
    # changing a file's content re-embeds it under the same path
    Image.new("RGB", (16, 16), (255, 0, 0)).save(paths[2])
    fifth = index.update(folder, scorer, "tiny")
    assert (fifth.added, fifth.updated) == (0, 1)
    index.close()


def test_index_refuses_queries_from_another_model(tmp_path, scorer, minilm):
    write_images(tmp_path / "images", 3)
    with SearchIndex(tmp_path / "index.sqlite", create=True) as index:
        index.update(tmp_path / "images", scorer, "tiny")
    other = tiny_scorer(minilm, seed=1, name="other")
    with SearchIndex(tmp_path / "index.sqlite") as index:
        assert index.model_spec == "tiny"
        with pytest.raises(ConfigError, match="built with model 'tiny'"):
            index.search_text(other, "a cat")
        with pytest.raises(ConfigError, match="built with model"):
            index.update(tmp_path / "images", other, "other")


def test_bad_inputs_give_clear_errors(tmp_path, scorer):
    with pytest.raises(MissingFileError, match="imagesynth index"):
        SearchIndex(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database file" * 100)
    with pytest.raises(DataError, match="not an imagesynth search index"):
        SearchIndex(tmp_path / "junk.sqlite")
    write_images(tmp_path / "images", 2)
    with SearchIndex(tmp_path / "index.sqlite", create=True) as index:
        with pytest.raises(DataError, match="not a folder"):
            index.update(tmp_path / "nope", scorer, "tiny")
        index.update(tmp_path / "images", scorer, "tiny")
        (tmp_path / "query.png").write_text("plain text pretending to be a PNG")
        with pytest.raises(InputImageError, match="query.png"):
            index.search_image(scorer, tmp_path / "query.png")
        with pytest.raises(ConfigError, match="empty query"):
            index.search_text(scorer, "  ")


def test_concurrent_reads_while_adding_do_not_corrupt(tmp_path, scorer):
    folder = tmp_path / "images"
    write_images(folder, 40)
    path = tmp_path / "index.sqlite"
    with SearchIndex(path, create=True) as index:
        index.update(folder, scorer, "tiny")
    write_images(folder, 200, seed=3, start=1000)
    query = scorer.embed_text(["a blue triangle"])[0]
    stop, failures = threading.Event(), []
    counts: list[list[int]] = [[], []]

    def reader(seen: list[int]) -> None:
        try:
            with SearchIndex(path) as own:
                while not stop.is_set():
                    results = own.search_vector(query, top_k=5)
                    seen.append(own.stats()["images"])
                    assert len(results) == 5
                    assert all(a.score >= b.score for a, b in zip(results, results[1:]))
                    assert all(os.path.exists(r.path) for r in results)
                    time.sleep(0.002)  # leave the writer some of the GIL
        except Exception as exc:  # surfaced in the main thread below
            failures.append(exc)

    readers = [threading.Thread(target=reader, args=(seen,)) for seen in counts]
    for thread in readers:
        thread.start()
    with SearchIndex(path) as writer:
        report = writer.update(folder, scorer, "tiny", batch_size=16)
    stop.set()
    for thread in readers:
        thread.join()
    assert not failures, failures
    assert report.added == 200
    for seen in counts:  # each reader only ever saw whole, growing snapshots
        assert seen and min(seen) >= 40 and max(seen) <= 240
        assert seen == sorted(seen)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 240


def test_faiss_and_exact_search_give_identical_results(big_index, scorer):
    pytest.importorskip("faiss")
    root, _ = big_index
    queries = scorer.embed_text(["a red square", "green", "dark blue and yellow"])
    with SearchIndex(root / "index.sqlite") as index:
        for query in queries:
            for top_k in (1, 10, 100):
                exact = index.search_vector(query, top_k, backend="numpy")
                approx = index.search_vector(query, top_k, backend="faiss")
                assert _as_tuples(exact) == _as_tuples(approx)
    assert FAISS_MIN_ROWS > 2000  # auto keeps NumPy for an index this small


def test_contact_sheet_links_images_relatively(big_index, scorer, tmp_path):
    root, _ = big_index
    with SearchIndex(root / "index.sqlite") as index:
        results = index.search_text(scorer, "a <red> & 'square'", top_k=3)
    out = root / "sheets" / "result.html"
    write_contact_sheet(results, out, "search: a <red> & 'square'")
    text = out.read_text()
    assert text.count("<img ") == 3
    assert "a &lt;red&gt; &amp; &#x27;square&#x27;" in text
    first = os.path.relpath(results[0].path, out.parent).replace(os.sep, "/")
    assert f'src="{first}"' in text and "http" not in text
    with pytest.raises(ConfigError, match="html"):
        write_contact_sheet(results, tmp_path / "sheet.png", "x")
